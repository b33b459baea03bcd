"""The bench's annotate section: both ways give the same answers and the row reports both frame rates; the
README tables show a part that failed as its error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mobile_o_ros import bench, bench_annotate
from mobile_o_ros.bench_tables import markdown

pytestmark = pytest.mark.runtime


def test_a_frame_seen_once_answers_as_independent_asks(tiny_runtime) -> None:
    row = bench_annotate.measure(tiny_runtime, frames=1, threads=1)
    assert row["answers_identical"] is True
    assert row["frames"] == 1 and row["questions_per_frame"] == len(bench_annotate.QUESTIONS) == 5
    assert row["independent_frames_per_s"] > 0 and row["shared_frames_per_s"] > 0
    assert row["speedup"] == pytest.approx(
        row["shared_frames_per_s"] / row["independent_frames_per_s"], rel=0.05
    )


def test_the_section_is_part_of_the_bench() -> None:
    assert "annotate" in bench.SECTIONS
    rows = bench_annotate.annotate_section(
        None, quick=True, threads=1, worker=lambda args: {"error": f"not run: {args[1]}"}
    )
    assert rows == {"embedded": {"error": "not run: embedded"}, "tiny": {"error": "not run: tiny"}}


def test_the_tables_show_a_failed_part_instead_of_failing() -> None:
    measured = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "bench_real_0.5b_cpu.json"
    report = json.loads(measured.read_text())
    broken = copy.deepcopy(report)
    broken["annotate"]["embedded"] = {"error": "no trained embedded model"}
    broken["ttft"]["real-0.5b"] = {"error": "export failed: disk full"}
    broken["int8"]["graphs"]["dit"] = {"error": "timed out"}
    broken["components"]["mcp"] = {"error": "export failed: onnx missing", "wall_s": 0.1}
    tables = markdown(broken)
    assert "| embedded shapes model | error: no trained embedded model |" in tables
    assert "| real-size 0.5B, random weights | error: export failed: disk full |" in tables
    assert (
        "| DiT step | error: timed out |" in tables
        and "| MCP | error: export failed: onnx missing |" in tables
    )
    assert markdown({**report, "int8": {"error": "export failed: x"}}).count("error: export failed: x") == 2
