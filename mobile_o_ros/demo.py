"""``make demo``: the whole stack on a laptop without a GPU.

camera topic → ROS 2 node (``mobile-o serve``, its own process) → onnxruntime engines → answers and images.
A synthetic camera streams shape scenes; the demo asks questions about the live frames, generates images
from prompts and edits the current frame through the node's services, then writes ``index.html`` and
``summary.json`` under the output folder and prints a short table.
"""

from __future__ import annotations

import html
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mobile_o_ros import model_store
from mobile_o_ros.manifest import load_manifest
from mobile_o_ros.scenes import Check, Prompt, Scene

NAMESPACE = "/mobile_o_demo"
CAMERA_TOPIC = "/demo/camera/image_raw"
GENERATE_PROMPTS = (
    "a red circle on the left",
    "a blue square at the top",
    "a green triangle and a yellow circle",
)
EDIT_INSTRUCTIONS = ("make the circle green",)
NUM_QUESTIONS = 6


# ------------------------------------------------------------------------------------------- model
def _ask_when_frame_arrives(client: Any, question: str, wait_s: float = 30.0) -> Any:
    """Ask about the demo camera; while the node has not received its first frame yet (DDS discovery
    takes a moment after start-up), wait and ask again, up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        resp = client.ask(question, camera=CAMERA_TOPIC, timeout=300)
        waiting = not resp.success and resp.message.startswith("no frame received yet")
        if not waiting or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def resolve_model(model: str | None) -> tuple[Path, str]:
    """(export folder, description) for ``--model`` (a model argument of the model store) or, without one,
    the embedded model; a tiny random checkpoint when the embedded model is not trained in this tree.
    The export comes from the store (made once per checkpoint and cached)."""
    if model is None and not model_store.embedded_is_trained():
        ref = model_store.resolve(model_store.TINY_RANDOM)
        description = "tiny random checkpoint (no trained embedded model found: answers and images are noise)"
    else:
        try:
            ref = model_store.resolve(model)
        except model_store.ModelError as err:
            raise SystemExit(f"mobile-o: error: {err}") from err
        description = ref.description
    return model_store.export_of(ref), description


# ------------------------------------------------------------------------------------------- scenes
_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def _fallback_scene(rng: random.Random, size: tuple[int, int] = (480, 640)) -> Scene:
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    colour = rng.choice(list(_COLOURS))
    shape = rng.choice(["circle", "square"])
    side = rng.choice(["left", "right"])
    cx = w // 4 if side == "left" else 3 * w // 4
    if shape == "circle":
        cv2.circle(img, (cx, h // 2), h // 5, _COLOURS[colour], -1)
    else:
        cv2.rectangle(
            img, (cx - h // 5, h // 2 - h // 5), (cx + h // 5, h // 2 + h // 5), _COLOURS[colour], -1
        )
    qa = [(f"what colour is the {shape}?", colour), (f"where is the {colour} {shape}?", side)]
    return Scene(img, f"a {colour} {shape} on the {side}", qa)


def make_scenes(n: int, seed: int = 0) -> list[Scene]:
    """Scenes from the shapes world when available, else simple drawn ones."""
    try:
        from mobile_o_ros.shapes.demo_scenes import demo_scenes

        return demo_scenes(n, seed)
    except ImportError:
        rng = random.Random(seed)
        return [_fallback_scene(rng) for _ in range(n)]


def make_prompts(n: int) -> list[Prompt]:
    """Captions of held-out shapes-world scenes (checked by the detector) when available, else fixed ones."""
    try:
        from mobile_o_ros.shapes.demo_scenes import demo_prompts

        return demo_prompts(n)
    except ImportError:
        return [Prompt(p) for p in GENERATE_PROMPTS[:n]]


def _checked(check: Check | None, image: np.ndarray) -> dict[str, Any]:
    if check is None:
        return {}
    ok, seen = check(image)
    return {"check": {"correct": bool(ok), "seen": seen}}


def _check_line(r: dict[str, Any]) -> list[str]:
    c = r.get("check")
    if not c:
        return []
    return [f"detector: {'✓ as asked' if c['correct'] else '✗ not as asked'} ({c['seen']})"]


def _count_checks(rows: list[dict[str, Any]]) -> str | None:
    checked = [r["check"]["correct"] for r in rows if r.get("check")]
    return f"{sum(checked)}/{len(checked)}" if checked else None


# ------------------------------------------------------------------------------------------- ROS side
class Camera:
    """Publishes the current scene as rgb8 at a fixed rate and remembers which stamp showed which scene."""

    def __init__(self, node: Any, scenes: list[Scene], rate_hz: float = 4.0) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from mobile_o_ros.ros.images import rgb_to_image

        self._to_msg = rgb_to_image
        self.node = node
        self.scenes = scenes
        self.index = 0
        self.stamps: dict[tuple[int, int], int] = {}
        self.lock = threading.Lock()
        self.pub = node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        self.timer = node.create_timer(1.0 / rate_hz, self.publish)

    def show(self, index: int) -> None:
        """Switch the camera to scene ``index``."""
        with self.lock:
            self.index = index

    def publish(self) -> None:
        """Timer callback: one frame of the current scene."""
        with self.lock:
            index = self.index
        msg = self._to_msg(self.scenes[index].image)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "demo_camera"
        self.stamps[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = index
        self.pub.publish(msg)

    def scene_of(self, header: Any) -> int | None:
        """Which scene a response's header stamp belongs to."""
        return self.stamps.get((header.stamp.sec, header.stamp.nanosec))


def _start_server(export_dir: Path, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    params = workdir / "demo_params.yaml"
    params.write_text(  # the sampling defaults are the model's own: the node reads them from the manifest
        "/**:\n  ros__parameters:\n"
        f"    camera_topics: ['{CAMERA_TOPIC}']\n    busy_policy: queue\n    max_queue: 8\n"
        "    continuous_question: ''\n"
    )
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    cmd = [
        sys.executable,
        "-m",
        "mobile_o_ros",
        "serve",
        "--model-dir",
        str(export_dir),
        "--backend",
        "onnxruntime",
        "--params",
        str(params),
        "--namespace",
        NAMESPACE,
    ]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _stamp(header: Any) -> str:
    """A header stamp as ISO 8601 UTC with milliseconds: ``2025-01-31T12:00:00.123Z``."""
    t = datetime.fromtimestamp(header.stamp.sec, tz=timezone.utc)
    t += timedelta(microseconds=header.stamp.nanosec // 1000)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _save(path: Path, rgb: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path.relative_to(path.parents[1]))


# ------------------------------------------------------------------------------------------- report
def _html(summary: dict[str, Any], records: dict[str, list[dict[str, Any]]]) -> str:
    e = html.escape

    def card(img: str, title: str, lines: list[str]) -> str:
        body = "".join(f"<div class='meta'>{e(x)}</div>" for x in lines)
        caption = f"<figcaption><b>{e(title)}</b>{body}</figcaption>"
        return f"<figure><img src='{e(img)}' alt='{e(title)}'>{caption}</figure>"

    rows = []
    for r in records["questions"]:
        ok = r.get("correct")
        mark = "" if ok is None else ("<span class='ok'>✓</span>" if ok else "<span class='bad'>✗</span>")
        rows.append(
            f"<tr><td><img class='thumb' src='{e(r['frame'])}'></td><td>{e(r['question'])}</td>"
            f"<td><b>{e(r['answer'] or '(empty)')}</b> {mark}</td><td>{e(r.get('expected') or '—')}</td>"
            f"<td>{e(r['stamp'])}</td><td>{r['latency_ms']:.0f} ms</td></tr>"
        )
    gens = "".join(
        card(r["image"], r["prompt"], [f"seed {r['seed']}", f"{r['latency_ms']:.0f} ms", *_check_line(r)])
        for r in records["generations"]
    )
    edits = "".join(
        card(r["source"], "camera frame", [r["source_stamp"]])
        + card(
            r["image"], r["instruction"], [f"seed {r['seed']}", f"{r['latency_ms']:.0f} ms", *_check_line(r)]
        )
        for r in records["edits"]
    )
    s = summary
    accuracy = s["vqa"]["accuracy_pct"]
    kpis = [
        (f"{accuracy}%" if accuracy is not None else "—", "VQA exact match"),
        (f"{s['vqa']['median_latency_ms']:.0f} ms", "median answer latency"),
        (f"{s['generation']['median_latency_ms']:.0f} ms", f"median generation ({s['steps']} steps)"),
        (f"{s['wall_s']:.0f} s", "whole demo"),
    ]
    kpi = "".join(f"<div><b>{e(v)}</b>{e(label)}</div>" for v, label in kpis)
    head = "".join(
        f"<th>{h}</th>" for h in ("frame", "question", "answer", "expected", "frame stamp (UTC)", "latency")
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>mobile_o_ros demo</title>'
        f"<style>{STYLE}</style></head><body><h1>mobile_o_ros demo</h1>"
        f'<p class="sub">camera topic → ROS 2 node → {e(s["backend"])} engines → answers and images</p>'
        f'<div class="note"><b>Model:</b> {e(s["model"])}.<br>{e(s["how_to_real"])}</div>'
        f'<div class="kpi">{kpi}</div>'
        f"<h2>Questions about live camera frames</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        f'<h2>Generated images</h2><div class="grid">{gens}</div>'
        f'<h2>Edited camera frame</h2><div class="grid">{edits}</div>'
        f"{_annotate_html(s.get('annotate'))}"
        f'<p class="meta">Written by <code>mobile-o demo</code> · {e(s["finished"])}</p></body></html>'
    )


def _annotate_html(a: dict[str, Any] | None) -> str:
    """The demo page's link to the annotated field recording's contact sheet ("" without one)."""
    if not a:
        return ""
    return (
        f"<h2>A field recording, annotated</h2><p><a href='{html.escape(a['index'])}'>Contact sheet</a> of "
        f"{a['frames']} frames ({a['frames_failed']} corrupt on purpose): typed answers right on "
        f"{a['bool_enum_right_pct']}% of bool and enum questions, {a['frames_per_second']} frames/s.</p>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;background:#f6f7fb}
h1{margin-bottom:.2rem} .sub{color:#5a6275;margin-top:0}
.note{background:#fff7df;border:1px solid #f0d98a;padding:.8rem 1rem;border-radius:8px}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden}
td,th{padding:.5rem .7rem;word-break:break-word;max-width:320px;text-align:left}
td,th{border-bottom:1px solid #e6e8ef}
th{background:#eef0f6} .grid{display:flex;flex-wrap:wrap;gap:1rem}
img.thumb,figure img{box-sizing:border-box;border:1px solid #aab2c3;border-radius:4px;background:#fff}
img.thumb{width:120px}
figure{margin:0;background:#fff;border-radius:8px;padding:.6rem;width:240px;box-shadow:0 1px 3px #0001}
figure img{width:240px;height:240px;object-fit:cover} .meta{color:#5a6275;font-size:.85rem}
.ok{color:#1a8a3a} .bad{color:#c0392b} .kpi{display:flex;gap:1rem;margin:1rem 0}
.kpi div{background:#fff;padding:.7rem 1rem;border-radius:8px;box-shadow:0 1px 3px #0001}
.kpi b{display:block;font-size:1.3rem}
"""


# ------------------------------------------------------------------------------------------- main
def run_demo(out_dir: Path, model: str | None = None, steps: int | None = None) -> int:
    """Run the demo end to end (``steps`` None: the model's default); returns a process exit code."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "images").mkdir(parents=True)
    export_dir, description = resolve_model(model or None)
    if steps is None:
        steps = int(load_manifest(export_dir)["defaults"]["steps"])
    print(f"model: {description}\nexport: {export_dir}", flush=True)

    import rclpy

    from mobile_o_ros.ros.client import MobileOClient

    env = dict(
        os.environ,
        ROS_DOMAIN_ID=os.environ.get("MOBILE_O_DEMO_DOMAIN", str(random.randint(150, 230))),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
    )
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    server = _start_server(export_dir, out_dir, env)
    scenes = make_scenes(NUM_QUESTIONS // 2 + 1)
    records: dict[str, list[dict[str, Any]]] = {"questions": [], "generations": [], "edits": []}
    rclpy.init()
    cam_node = rclpy.create_node("demo_camera")
    camera = Camera(cam_node, scenes)
    spinner = rclpy.executors.SingleThreadedExecutor()
    spinner.add_node(cam_node)
    spin_thread = threading.Thread(target=spinner.spin, daemon=True)
    spin_thread.start()
    client = None
    try:
        client = MobileOClient(namespace=NAMESPACE, wait_timeout=120.0)
        if not client.wait_for_services(timeout=120.0):
            raise SystemExit(f"mobile-o: error: the node did not come up; see {out_dir / 'server.log'}")
        asked = 0
        for i, scene in enumerate(scenes):
            camera.show(i)
            time.sleep(0.6)
            for question, expected in scene.qa[: max(1, NUM_QUESTIONS // len(scenes))]:
                if asked >= NUM_QUESTIONS:
                    break
                resp = _ask_when_frame_arrives(client, question)
                asked += 1
                shown = camera.scene_of(resp.image_header)
                frame = _save(
                    out_dir / "images" / f"frame_{asked}.png", scenes[shown if shown is not None else i].image
                )
                answer = resp.answer if resp.success else f"(failed: {resp.message})"
                truth = scenes[shown].qa if shown is not None else scene.qa
                expected_now = dict(truth).get(question, expected)
                records["questions"].append(
                    {
                        "question": question,
                        "answer": answer,
                        "expected": expected_now,
                        "correct": resp.success and answer.strip().lower() == expected_now.lower(),
                        "frame": frame,
                        "stamp": _stamp(resp.image_header),
                        "frame_id": resp.image_header.frame_id,
                        "latency_ms": float(resp.latency_ms),
                    }
                )
        for k, prompt in enumerate(make_prompts(len(GENERATE_PROMPTS))):
            resp = client.generate(prompt.text, steps=steps, seed=k, timeout=600)
            if not resp.success:
                raise SystemExit(f"mobile-o: error: generation failed: {resp.message}")
            rgb = client.image_array(resp.image)
            img = _save(out_dir / "images" / f"generated_{k}.png", rgb)
            records["generations"].append(
                {
                    "prompt": prompt.text,
                    "image": img,
                    "seed": int(resp.seed),
                    "latency_ms": float(resp.latency_ms),
                    **_checked(prompt.check, rgb),
                }
            )
        camera.show(0)
        time.sleep(0.6)
        instructions = [scenes[0].edit] if scenes[0].edit else list(EDIT_INSTRUCTIONS)
        for k, instruction in enumerate(instructions):
            resp = client.edit(instruction, camera=CAMERA_TOPIC, steps=steps, seed=k, timeout=600)
            if not resp.success:
                raise SystemExit(f"mobile-o: error: edit failed: {resp.message}")
            shown = camera.scene_of(resp.source_header)
            src = _save(
                out_dir / "images" / f"edit_source_{k}.png", scenes[shown if shown is not None else 0].image
            )
            rgb = client.image_array(resp.image)
            img = _save(out_dir / "images" / f"edited_{k}.png", rgb)
            records["edits"].append(
                {
                    "instruction": instruction,
                    "image": img,
                    "source": src,
                    "seed": int(resp.seed),
                    "source_stamp": f"frame stamp {_stamp(resp.source_header)}",
                    "latency_ms": float(resp.latency_ms),
                    **_checked(scenes[0].edit_check if shown == 0 else None, rgb),
                }
            )
    finally:
        if client is not None:
            client.close()
        spinner.shutdown()
        cam_node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    from mobile_o_ros.annotate.demo import annotate_demo

    field = annotate_demo(out_dir, str(export_dir), log=lambda m: print(m, flush=True))
    q = records["questions"]
    graded = [r["correct"] for r in q if r.get("expected")]
    summary = {
        "model": description,
        "export_dir": str(export_dir),
        "backend": "onnxruntime (CPU)",
        "steps": steps,
        "how_to_real": "To run real Mobile-O weights: mobile-o export CHECKPOINT EXPORT_DIR, then "
        "mobile-o demo --model EXPORT_DIR (or ros2 launch mobile_o_ros mobile_o.launch.py "
        "model_dir:=EXPORT_DIR); "
        "on a Jetson build TensorRT engines with mobile-o build-engines and use backend:=tensorrt.",
        "vqa": {
            "questions": len(q),
            "accuracy_pct": round(100 * sum(graded) / len(graded), 1) if graded else None,
            "median_latency_ms": statistics.median(r["latency_ms"] for r in q) if q else 0.0,
        },
        "generation": {
            "images": len(records["generations"]),
            "detector_correct": _count_checks(records["generations"]),
            "median_latency_ms": statistics.median(r["latency_ms"] for r in records["generations"]),
        },
        "edit": {
            "images": len(records["edits"]),
            "detector_correct": _count_checks(records["edits"]),
            "median_latency_ms": statistics.median(r["latency_ms"] for r in records["edits"]),
        },
        "annotate": field,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "records": records,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "index.html").write_text(_html(summary, records))
    print(f"\n{'task':<10} {'n':>3} {'median latency':>15}  result")
    print(
        f"{'ask':<10} {len(q):>3} {summary['vqa']['median_latency_ms']:>12.0f} ms  "
        f"accuracy {summary['vqa']['accuracy_pct']}%"
    )
    tasks = (("generate", "generation", records["generations"]), ("edit", "edit", records["edits"]))
    for name, key, rows in tasks:
        checked = summary[key]["detector_correct"]
        print(
            f"{name:<10} {len(rows):>3} {summary[key]['median_latency_ms']:>12.0f} ms"
            + (f"  detector: {checked} as asked" if checked else "")
        )
    print(
        f"{'annotate':<10} {field['frames']:>3} field-bag frames, {field['frames_per_second']} frames/s, "
        f"{field['bool_enum_right_pct']}% of bool/enum answers right: {out_dir / field['index']}"
    )
    print(f"\nwrote {out_dir / 'index.html'} and {out_dir / 'summary.json'} in {summary['wall_s']:.0f} s")
    print(f"this was the {description}.\n{summary['how_to_real']}")
    return 0
