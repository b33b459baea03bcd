"""``index.html``: a contact sheet of the annotated frames, grouped by camera, filterable by answer.

Written from ``annotations.jsonl`` one camera at a time (memory does not grow with the run). Each frame is a
card with its thumbnail, index, stamp and the value of every task; the filters above keep the cards whose
bool or enum answer is the one chosen, or whose text contains what is typed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mobile_o_ros.annotate.tasks import Tasks, value_text
from mobile_o_ros.annotate.writer import JSONL, frames_of, read_records, thumb_path

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;background:#fafafa;color:#222}
#filters{display:flex;flex-wrap:wrap;gap:.8em;margin:.6em 0;padding:.6em;background:#fff;
  border:1px solid #ddd}
#filters label{font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:180px;margin:0;background:#fff;border:1px solid #ddd;font-size:.75em;padding:4px}
.card img{width:100%;display:block;background:#eee}
.card.error{border-color:#c33}
.card .err{color:#c33}
.hidden{display:none}
"""

SCRIPT = """
const filters=[...document.querySelectorAll('#filters [data-task]')];
const errorsOnly=document.getElementById('errors-only');
function apply(){
  let shown=0;
  document.querySelectorAll('.card').forEach(card=>{
    let ok=!errorsOnly.checked||card.classList.contains('error');
    filters.forEach(f=>{
      const v=card.dataset['t'+f.dataset.task]??'';
      if(f.tagName==='SELECT'){ if(f.value!=='*'&&v!==f.value) ok=false; }
      else if(f.value&&!v.toLowerCase().includes(f.value.toLowerCase())) ok=false;
    });
    card.classList.toggle('hidden',!ok); if(ok) shown++;
  });
  document.getElementById('count').textContent=shown+' frames shown';
}
filters.forEach(f=>f.addEventListener('input',apply)); errorsOnly.addEventListener('input',apply); apply();
"""


def _filters(tasks: Tasks) -> str:
    parts = []
    for i, q in enumerate(tasks.questions):
        label = html.escape(q.id)
        if q.type in ("bool", "enum"):
            values = ["true", "false"] if q.type == "bool" else list(q.options)
            options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
            parts.append(
                f'<label>{label} <select data-task="{i}"><option value="*">any</option>{options}'
                f'<option value="">(no answer)</option></select></label>'
            )
        else:
            parts.append(f'<label>{label} <input data-task="{i}" placeholder="contains"></label>')
    parts.append('<label><input type="checkbox" id="errors-only"> failed frames only</label>')
    return '<div id="filters">' + "".join(parts) + "</div>"


def _card(tasks: Tasks, group: list[dict[str, Any]]) -> str:
    first = group[0]
    by_task = {r["task"]: r for r in group}
    error = next((r["error"] for r in group if r.get("error")), "")
    data = " ".join(
        f'data-t{i}="{html.escape(value_text(by_task[q.id]["value"]) if q.id in by_task else "")}"'
        for i, q in enumerate(tasks.questions)
    )
    lines = []
    for q in tasks.questions:
        if q.id in by_task and not by_task[q.id].get("error"):
            lines.append(
                f"<b>{html.escape(q.id)}</b>: {html.escape(value_text(by_task[q.id]['value']) or '—')}"
            )
    for e in tasks.edits:
        r = by_task.get(e.id)
        if r and not r.get("error"):
            lines.append(f'<b>{html.escape(e.id)}</b>: <a href="{html.escape(r["answer"])}">edited</a>')
    if error:
        lines.append(f'<span class="err">{html.escape(error)}</span>')
    stamp = int(first["stamp_ns"] or 0) / 1e9
    src = html.escape(thumb_path(first["topic"], int(first["frame_index"])))
    img = "" if error else f'<img loading="lazy" src="{src}" alt="">'
    return (
        f'<figure class="card{" error" if error else ""}" {data}>{img}<figcaption>'
        f"#{first['frame_index']} · {stamp:.3f} s<br>{'<br>'.join(lines)}</figcaption></figure>"
    )


def write_contact_sheet(out_dir: Path, tasks: Tasks, title: str = "Annotations") -> int:
    """Write ``index.html``; returns the frames on it."""
    topics: dict[str, int] = {}
    for group in frames_of(read_records(out_dir / JSONL)):
        topics[group[0]["topic"]] = topics.get(group[0]["topic"], 0) + 1
    tmp = out_dir / "index.html.tmp"
    total = sum(topics.values())
    with tmp.open("w", encoding="utf-8") as f:
        f.write(
            f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{total} frames from {len(topics)} camera(s); tasks: "
            f'{html.escape(", ".join(tasks.ids))}. Data: <a href="annotations.jsonl">annotations.jsonl</a>, '
            f'<a href="annotations.csv">annotations.csv</a>, <a href="summary.json">summary.json</a>.</p>'
        )
        f.write(_filters(tasks) + '<p id="count"></p>')
        for topic, count in topics.items():
            f.write(f'<section><h2>{html.escape(topic)} ({count} frames)</h2><div class="grid">')
            for group in frames_of(read_records(out_dir / JSONL)):
                if group[0]["topic"] == topic:
                    f.write(_card(tasks, group))
            f.write("</div></section>")
        f.write(f"<script>{SCRIPT}</script></body></html>\n")
    tmp.replace(out_dir / "index.html")
    return total
