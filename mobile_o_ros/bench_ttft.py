"""``make bench``'s ``ttft`` section: time to first token of a question about a camera frame, cold against
warm, on the embedded shapes model and on the real 0.5B configuration with random weights (onnxruntime CPU).

* cold: :meth:`~mobile_o_ros.runtime.engine.MobileORuntime.ask` on the picture: the vision pass and the
  prefill of the whole prompt (its ~300 tokens at real size) come before the first token;
* warm: :meth:`~mobile_o_ros.runtime.engine.MobileORuntime.ask_about` on the frame seen ahead (what the node
  does while idle, ``warm_rate_hz``): only the question's tokens are prefilled.

Each call generates one token, greedy, so its wall time is the time to the first token. The row also
times the warming itself (:meth:`~mobile_o_ros.runtime.engine.MobileORuntime.frame`, the work moved to idle
time) and says whether the cold and warm first tokens were the same. Each row runs in its own process
(``python -m mobile_o_ros.bench_ttft``); the real-size row uses the random-weight vision and LLM export of
:mod:`mobile_o_ros.bench_annotate` (made once under the bench folder, shared with its section).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: Timed questions per row (each about a new picture), after one warm-up question.
REPEATS = {"real-0.5b": 4, "embedded": 12, "tiny": 3}
#: The goal at real size: a warm first token within this fraction of a cold one.
GOAL_FRACTION = 0.10


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def measure(rt: Any, repeats: int) -> dict[str, Any]:
    """Cold and warm time to first token over ``repeats`` pictures (after one warm-up of each way)."""
    from mobile_o_ros.bench_annotate import QUESTIONS, pictures

    shots = pictures(repeats + 1)
    options = {"max_new_tokens": 1, "temperature": 0.0, "seed": 0}
    rt.ask(shots[0], QUESTIONS[0], **options)
    rt.ask_about(rt.frame(shots[0]), QUESTIONS[0], **options)
    cold, warm, warming = [], [], []
    identical = True
    prefix = question = 0
    for i, picture in enumerate(shots[1:]):
        q = QUESTIONS[i % len(QUESTIONS)]
        t0 = time.perf_counter()
        first_cold = rt.ask(picture, q, **options)
        cold.append(_ms(t0))
        t0 = time.perf_counter()
        frame = rt.frame(picture)
        warming.append(_ms(t0))
        t0 = time.perf_counter()
        first_warm = rt.ask_about(frame, q, **options)
        warm.append(_ms(t0))
        identical = identical and first_cold.token_ids == first_warm.token_ids
        prefix, question = frame.prefix_len, first_warm.prompt_tokens - frame.prefix_len
    cold_ms, warm_ms = statistics.median(cold), statistics.median(warm)
    return {
        "questions": repeats,
        "prefix_tokens": prefix,
        "question_tokens_last": question,
        "cold_ms": round(cold_ms, 1),
        "warm_ms": round(warm_ms, 1),
        "warm_over_cold": round(warm_ms / cold_ms, 4),
        "warming_ms": round(statistics.median(warming), 1),
        "cold_runs_ms": [round(x, 1) for x in cold],
        "warm_runs_ms": [round(x, 1) for x in warm],
        "first_tokens_identical": identical,
    }


def run_row(row: str, work_dir: Path, threads: int) -> dict[str, Any]:
    """One row: ``embedded`` (the shapes model's export), ``real-0.5b`` or ``tiny`` (random weights)."""
    from mobile_o_ros.bench_annotate import row_runtime

    rt, model = row_runtime(row, work_dir, threads)
    try:
        result = measure(rt, REPEATS[row])
    finally:
        rt.close()
    if row != "embedded":
        result["goal"] = f"warm <= {GOAL_FRACTION:.0%} of cold"
        result["goal_met"] = result["warm_over_cold"] <= GOAL_FRACTION
    return {"model": model, "image_size": rt.image_size, "threads": threads, **result}


def _line(row: dict[str, Any]) -> str:
    return (
        f"cold {row['cold_ms']:9.1f} ms   warm {row['warm_ms']:8.1f} ms "
        f"({row['warm_over_cold']:.1%} of cold; warming {row['warming_ms']:.1f} ms; "
        f"first tokens identical: {row['first_tokens_identical']})"
    )


def ttft_section(work_dir: Path, quick: bool, threads: int, worker: Any) -> dict[str, Any]:
    """The section's rows (embedded, then real-0.5b, or tiny with ``quick``), each from ``worker(args)`` (a
    subprocess of this module)."""
    from mobile_o_ros.bench_annotate import run_section

    return run_section("ttft", work_dir, quick, threads, worker, _line)


if __name__ == "__main__":
    from mobile_o_ros.bench_annotate import row_main

    raise SystemExit(row_main("python -m mobile_o_ros.bench_ttft", run_row, sys.argv[1:]))
