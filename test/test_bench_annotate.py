"""The bench's annotate section: both ways give the same answers and the row reports both frame rates."""

from __future__ import annotations

import pytest

from mobile_o_ros import bench, bench_annotate

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
