"""The bench's ttft section: cold and warm first tokens agree, the warm one prefills only the question, and
the section runs as part of ``mobile-o bench`` with the machine recorded around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobile_o_ros import bench, bench_ttft

pytestmark = pytest.mark.runtime


def test_a_row_times_both_ways_on_the_same_first_token(tiny_runtime) -> None:
    row = bench_ttft.measure(tiny_runtime, repeats=2)
    assert row["first_tokens_identical"] is True and row["questions"] == 2
    assert row["cold_ms"] > 0 and row["warm_ms"] > 0 and row["warming_ms"] > 0
    assert len(row["cold_runs_ms"]) == len(row["warm_runs_ms"]) == 2
    # the milliseconds are rounded to 0.1 ms, the ratio is taken before rounding
    assert row["warm_over_cold"] == pytest.approx(row["warm_ms"] / row["cold_ms"], rel=0.2, abs=0.01)
    assert row["prefix_tokens"] > tiny_runtime.manifest["image"]["num_tokens"]
    assert 0 < row["question_tokens_last"] < 20


@pytest.mark.slow
@pytest.mark.torch  # the tiny model's row exports a checkpoint
def test_the_section_runs_in_the_bench(tmp_path: Path) -> None:
    assert "ttft" in bench.SECTIONS
    # allow_loaded: a test runs beside others; its rows say so
    assert bench.run_bench(tmp_path, quick=True, sections=["ttft"], allow_loaded=True) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = report["ttft"]
    assert rows["loaded"] is True and rows["machine_before"]["cpu_model"]
    for name in ("embedded", "tiny"):
        if "error" in rows[name] and name == "embedded":
            continue  # a tree without the trained embedded model
        assert rows[name]["first_tokens_identical"] is True, rows[name]
        assert rows[name]["cold_ms"] > 0 and rows[name]["warm_ms"] > 0
    assert rows["tiny"]["goal"] == "warm <= 10% of cold" and isinstance(rows["tiny"]["goal_met"], bool)
