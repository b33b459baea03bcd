"""The README's benchmark tables, written from a ``bench.json`` of ``mobile-o bench``.

``mobile-o bench`` writes them to ``bench_out/bench.md``; the README's "Benchmarks" section holds the tables
of the run in ``docs/measurements/``, and a test checks that they are this module's output for that file.
"""

from __future__ import annotations

from typing import Any

from mobile_o_ros.bench_int8 import QUESTION_TOKENS

#: Component rows in table order, with their labels.
COMPONENT_LABELS = {
    "vision": "vision encoder",
    "llm_prefill": "LLM prefill, {prefill} tokens",
    "llm_decode": "LLM decode, per token",
    "mcp": "MCP",
    "dit_step": "DiT step (CFG batch of 2)",
    "vae_decode": "VAE decode",
    "generation": "whole image, {steps} steps",
}
#: int8 graphs in table order, with their labels.
INT8_LABELS = {
    "vision": "vision encoder",
    "llm": "LLM",
    "mcp": "MCP",
    "dit": "DiT step",
    "vae_decoder": "VAE",
}
#: The models of the annotate and ttft sections (``tiny`` with ``--quick``).
MODEL_LABELS = {
    "embedded": "embedded shapes model",
    "real-0.5b": "real-size 0.5B, random weights",
    "tiny": "tiny, random weights",
}


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _failed(label: str, error: str, columns: int) -> list[str]:
    """The row of a part that failed: its label, the error, empty cells."""
    return [label, f"error: {error}", *[""] * (columns - 2)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _loads(report: dict[str, Any]) -> list[float]:
    """Every 1-minute load average recorded before and after a row."""
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("machine_before", "machine_after") and isinstance(value, dict):
                    found.append(float(value["load_average"][0]))
                else:
                    walk(value)

    walk(report)
    return found


def machine_line(report: dict[str, Any]) -> str:
    """Which machine gave the figures, when, and the load at the start and during the rows."""
    m = report["machine"]
    loads = _loads(report)
    during = f"at most {max(loads):.2f}" if loads else "not recorded"
    marked = " Every row is marked loaded (`--allow-loaded`)." if report["load_check"]["allow_loaded"] else ""
    return (
        f"Measured by `mobile-o bench` on {m['cpu_count']} cores of an {m['cpu_model']} ({m['processor']}), "
        f"{m['threads']} threads, Python {m['python']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}, "
        f"starting {m['time'].replace('T', ' ')}. The 1-minute load average was {m['load_average'][0]:.2f} "
        f"at the start and {during} before and after the rows (the bench's own threads).{marked} "
        f"The components and int8 rows run the `{report['config']}` model with random weights."
    )


def components_table(report: dict[str, Any]) -> str:
    """Median wall time per part, torch eager against onnxruntime, with peak RSS."""
    settings = report["settings"]
    rows = []
    for name, label in COMPONENT_LABELS.items():
        row = report.get("components", {}).get(name)
        if row is None:
            continue
        label = label.format(prefill=settings["prefill_tokens"], steps=settings["generation_steps"])
        if "error" in row:
            rows.append(_failed(label, row["error"], 5))
            continue
        torch, ort = row.get("torch", {}), row.get("onnxruntime", {})
        rss = f"{torch.get('peak_rss_mb', 0):,.0f} / {ort.get('peak_rss_mb', 0):,.0f} MB"
        rows.append(
            [
                label,
                _ms(torch.get("median_ms")),
                _ms(ort.get("median_ms")),
                _ratio(row.get("speedup_onnxruntime_vs_torch")),
                rss,
            ]
        )
    return _table(["part", "torch eager", "onnxruntime", "speed-up", "peak RSS, torch / onnxruntime"], rows)


def int8_table(report: dict[str, Any]) -> str:
    """Each graph's int8 candidates against fp32 (timed back to back), their cosine, and what was kept."""
    rows = []
    for name, label in INT8_LABELS.items():
        graph = report.get("int8", {}).get("graphs", {}).get(name)
        if graph is None:
            continue
        if "error" in graph:
            rows.append(_failed(label, graph["error"], 4))
            continue
        candidates = graph.get("candidates", {})
        kinds = list(next(iter(candidates.values()), {}).get("timing", {}))
        for kind in kinds:
            cells = []
            for mode in ("int8-qdq", "int8-dynamic"):
                c = candidates.get(mode)
                t = (c or {}).get("timing", {}).get(kind)
                cells.append(
                    "—"
                    if t is None
                    else f"{_ms(t['fp32_ms'])} → {_ms(t['int8_ms'])}, {_ratio(t['speedup'])}, "
                    f"cosine {c['cosine']:.5f}"
                )
            call = (
                label if kind == "call" else f"{label} {kind}" + (", per token" if kind == "decode" else "")
            )
            rows.append([call, *cells, f"`{graph['mode']}`"])
    return _table(["graph", "int8-qdq: fp32 → int8", "int8-dynamic: fp32 → int8", "kept"], rows)


def int8_end_to_end_table(report: dict[str, Any]) -> str:
    """Whole tasks on all-fp32 graphs against the int8 export and against each graph's fastest candidate."""
    labels = {
        "image_20_steps": "whole image, 20 steps",
        "scene_question": f"scene question: vision, {report['settings']['prefill_tokens']}-token prefill, "
        f"{QUESTION_TOKENS} tokens",
    }
    rows = []
    for name, label in labels.items():
        row = report.get("int8", {}).get("end_to_end", {}).get("rows", {}).get(name)
        if row is None:
            continue
        chosen, fastest = row["chosen"], row["fastest"]
        rows.append(
            [
                label,
                _ms(chosen["fp32_ms"]),
                f"{_ms(chosen['int8_ms'])}, {_ratio(chosen['speedup'])}",
                f"{_ms(fastest['int8_ms'])}, {_ratio(fastest['speedup'])}",
            ]
        )
    return _table(["task", "fp32", "int8 export (kept graphs)", "every graph's fastest int8"], rows)


def annotate_table(report: dict[str, Any]) -> str:
    """Annotation frames per second: one ask per question against the frame seen once."""
    rows = []
    for name, label in MODEL_LABELS.items():
        r = report.get("annotate", {}).get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append(_failed(label, r["error"], 7))
            continue
        rows.append(
            [
                label,
                f"{r['image_size']}²",
                str(r["questions_per_frame"]),
                f"{r['independent_frames_per_s']:.3g} frames/s ({r['independent_s_per_frame']:.3g} s/frame)",
                f"{r['shared_frames_per_s']:.3g} frames/s ({r['shared_s_per_frame']:.3g} s/frame)",
                _ratio(r["speedup"]),
                "yes" if r["answers_identical"] else "**no**",
            ]
        )
    header = [
        "model",
        "image",
        "questions",
        "one ask per question",
        "frame seen once",
        "speed-up",
        "same answers",
    ]
    return _table(header, rows)


def ttft_table(report: dict[str, Any]) -> str:
    """Time to first token of a question about a camera frame, cold and warm."""
    rows = []
    for name, label in MODEL_LABELS.items():
        r = report.get("ttft", {}).get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append(_failed(label, r["error"], 6))
            continue
        rows.append(
            [
                label,
                _ms(r["cold_ms"]),
                _ms(r["warm_ms"]),
                f"{100 * r['warm_over_cold']:.1f}%",
                _ms(r["warming_ms"]),
                "yes" if r["first_tokens_identical"] else "**no**",
            ]
        )
    header = ["model", "cold", "warm frame", "warm / cold", "warming (while idle)", "same first token"]
    return _table(header, rows)


def markdown(report: dict[str, Any]) -> str:
    """Every table the report has sections for, each under a bold title, after :func:`machine_line`; a part
    or section that failed shows its error."""
    parts = [machine_line(report)]
    sections = [
        ("components", "Components, torch eager against onnxruntime (median)", components_table),
        ("int8", "int8 against fp32 per graph, onnxruntime", int8_table),
        ("int8", "int8 end to end", int8_end_to_end_table),
        ("annotate", "Annotation", annotate_table),
        ("ttft", "Time to first token", ttft_table),
    ]
    for key, title, table in sections:
        section = report.get(key)
        if section:
            body = f"error: {section['error']}" if "error" in section else table(report)
            parts.append(f"**{title}**\n\n{body}")
    return "\n\n".join(parts) + "\n"
