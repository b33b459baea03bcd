"""An int8 export runs wherever an fp32 export runs: ``mobile-o annotate``, ``mobile-o serve`` over DDS and
``mobile-o demo`` take the tiny export with every graph forced to QDQ int8, and give what the runtime gives
on that export.

- ``annotate`` names the int8 graphs in its model id, so a run folder never mixes fp32 and int8 answers:
  resuming an fp32 run with the int8 export is refused with a one-line error.
- The node logs and reports in ``/diagnostics`` which graphs are int8; its answer and images equal the
  in-process runtime's on the same export (same seed).
- ``mobile-o demo --model INT8_EXPORT`` finishes and annotates its field recording.

The lanes without torch use the int8 copy that ``make tiny-export`` writes beside the tiny export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from int8_support import GRAPHS

from mobile_o_ros.annotate import writer
from mobile_o_ros.cli import main
from mobile_o_ros.manifest import int8_graphs, load_manifest
from mobile_o_ros.runtime.engine import MobileORuntime

pytestmark = [pytest.mark.runtime, pytest.mark.timeout(900)]

FRAMES = 4  # per camera


def _annotate(bag: Path, out: Path, model: Path) -> list[str]:
    return [
        "annotate",
        str(bag),
        "--tasks",
        str(bag / "tasks.yaml"),
        "--out",
        str(out),
        "--model",
        str(model),
    ]


def test_int8_graphs_are_read_from_the_manifest(tiny_int8_export: Path, tiny_export: Path) -> None:
    assert int8_graphs(load_manifest(tiny_int8_export)) == list(GRAPHS)
    assert int8_graphs(load_manifest(tiny_export)) == []
    assert MobileORuntime.load(tiny_int8_export, backend="onnxruntime").info()["int8_graphs"] == list(GRAPHS)


def test_annotate_takes_an_int8_export_and_never_mixes_it_with_fp32(
    tiny_int8_export: Path, tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag = tmp_path / "bag"
    assert main(["make-field-bag", str(bag), "--frames", str(FRAMES)]) == 0
    out = tmp_path / "int8"
    assert main(_annotate(bag, out, tiny_int8_export)) == 0
    summary = json.loads((out / writer.SUMMARY).read_text())
    assert summary["status"] == "complete" and summary["frames_read"] == 2 * FRAMES
    assert summary["frames_annotated"] + summary["frames_failed"] == 2 * FRAMES
    assert summary["model"].endswith("+int8:" + ",".join(GRAPHS)), summary["model"]
    records = list(writer.read_records(out / writer.JSONL))
    assert len(records) == summary["records"] == 2 * FRAMES * 5
    assert {r["model"] for r in records} == {summary["model"]}
    good = [r for r in records if r["error"] is None]
    assert len(good) == 5 * summary["frames_annotated"] and all(r["answer"] is not None for r in good)

    fp32 = tmp_path / "fp32"
    assert main(_annotate(bag, fp32, tiny_export)) == 0
    fp32_model = json.loads((fp32 / writer.SUMMARY).read_text())["model"]
    assert "+int8" not in fp32_model and summary["model"].startswith(fp32_model + "+int8:")
    capsys.readouterr()
    assert main(_annotate(bag, fp32, tiny_int8_export)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mobile-o: error: ") and "model differ" in err[0], err
    after = list(writer.read_records(fp32 / writer.JSONL))
    assert len(after) == 2 * FRAMES * 5 and {r["model"] for r in after} == {fp32_model}


# ------------------------------------------------------------------------------------------- serve
@pytest.mark.ros
def test_serve_answers_from_an_int8_export_as_the_runtime_does(
    tiny_int8_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
    pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_support import RosSide, domain_id, running_server, wait_until

    from mobile_o_ros.ros.client import MobileOClient

    domain, ns = domain_id(17), f"/mo_int8_{uuid.uuid4().hex[:6]}"
    params = {"max_new_tokens": 4, "busy_policy": "queue", "max_queue": 4, "diagnostics_period_s": 0.25}
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 32:] = (200, 40, 40)
    runtime = MobileORuntime.load(tiny_int8_export, backend="onnxruntime")
    try:
        expected_answer = runtime.ask(image, "what colour is it?", max_new_tokens=4).answer
        expected_image = runtime.generate("a red circle", steps=1, seed=3).image
    finally:
        runtime.close()
    workdir = tmp_path_factory.mktemp("int8_server")
    with running_server(tiny_int8_export, ns, domain, params, workdir) as server, RosSide(domain) as ros:
        assert f"(int8: {', '.join(GRAPHS)})" in server.log(), server.log()
        arrays = ros.collect(DiagnosticArray, "/diagnostics")
        with MobileOClient(ns, context=ros.context, wait_timeout=30.0) as client:
            resp = client.ask("what colour is it?", image=image, max_new_tokens=4, timeout=60)
            assert resp.success and resp.answer == expected_answer, resp
            resp = client.generate("a red circle", steps=1, seed=3, timeout=120)
            assert resp.success, resp
            np.testing.assert_array_equal(client.image_array(resp.image), expected_image)

        def int8_reported() -> bool:
            values = [{kv.key: kv.value for kv in st.values} for _, arr in arrays for st in arr.status]
            return any(v.get("int8_graphs") == ",".join(GRAPHS) for v in values)

        assert wait_until(int8_reported, 15.0), "no /diagnostics status named the int8 graphs"


# ------------------------------------------------------------------------------------------- demo
@pytest.mark.slow
@pytest.mark.ros
def test_demo_takes_an_int8_export(tiny_int8_export: Path, tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
    out = tmp_path / "demo_out"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mobile_o_ros", "demo", "--model", str(tiny_int8_export), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export_dir"] == str(tiny_int8_export)
    assert summary["generation"]["images"] >= 1 and summary["edit"]["images"] >= 1
    assert summary["annotate"]["frames"] > 0 and (out / summary["annotate"]["index"]).is_file()
    annotated = json.loads((out / "annotate" / writer.SUMMARY).read_text())
    assert annotated["model"].endswith("+int8:" + ",".join(GRAPHS))
