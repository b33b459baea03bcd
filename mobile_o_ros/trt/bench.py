"""TensorRT rows of ``make bench``: the Jetson targets, measured with CUDA events and wall time.

Runs where ``tensorrt`` and ``pycuda`` import and engines exist (``mobile-o build-engines``). Not run on
the development machines (no TensorRT there); the code path is the production one: ``MobileORuntime`` on
``TensorRTBackend``.

GPU time comes from the backend itself (``timing=True``): CUDA events recorded on its own stream around
each call's copies and enqueue, read in its own context. Nothing here calls pycuda directly: the backend
pops its context after every call, so a bare ``cuda.Event()`` or ``cuda.mem_get_info()`` would have no
current context.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Targets from the product brief, for an Orin Nano Super.
TARGETS = {
    "generation_20_steps_s": 2.5,
    "first_token_ms": 250.0,
    "decode_tokens_per_s": 40.0,
    "gpu_memory_gb": 2.0,
}


def power_mode() -> dict[str, str]:
    """``nvpmodel -q`` and ``jetson_clocks --show`` output when present (Jetson), else a note."""
    out = {}
    for name, cmd in (("nvpmodel", ["nvpmodel", "-q"]), ("jetson_clocks", ["jetson_clocks", "--show"])):
        try:
            out[name] = subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out[name] = "not available"
    l4t = Path("/etc/nv_tegra_release")
    out["l4t"] = l4t.read_text().splitlines()[0] if l4t.is_file() else "not a Jetson"
    return out


def _gpu_ms(timings: dict[str, dict[str, float]]) -> float:
    return sum(r["h2d_ms"] + r["enqueue_ms"] + r["d2h_ms"] for r in timings.values())


def measure(backend: Any, fn: Any) -> tuple[float, float]:
    """(GPU ms from the backend's events, wall ms) of one call of ``fn``."""
    backend.timings(reset=True)
    t0 = time.perf_counter()
    fn()
    wall = (time.perf_counter() - t0) * 1000
    return _gpu_ms(backend.timings(reset=True)), wall


def decode_split(timings: dict[str, Any], profile: int = 1) -> dict[str, float]:
    """Per decode step of the ``llm`` engine (its decode profile): ms of host-to-device copies, enqueue,
    device-to-host copies, and wall."""
    row = timings.get("llm", {}).get("by_profile", {}).get(profile)
    if not row or not row["calls"]:
        return {"calls": 0}
    n = row["calls"]
    return {"calls": n, **{k: row[k] / n for k in ("h2d_ms", "enqueue_ms", "d2h_ms", "wall_ms")}}


def run_trt_bench(
    export_dir: Path,
    engine_dir: Path | None = None,
    repeats: int = 5,
    steps: int = 20,
    max_new_tokens: int = 64,
) -> dict[str, Any]:
    """Per-component and whole-task latency (GPU ms from CUDA events, wall ms), memory and power mode."""
    from mobile_o_ros.runtime.engine import MobileORuntime

    runtime = MobileORuntime.load(export_dir, backend="tensorrt", engine_dir=engine_dir, timing=True)
    backend = runtime.backend
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def median(fn) -> dict[str, float]:
        fn()  # warm-up
        runs = [measure(backend, fn) for _ in range(repeats)]
        return {
            "gpu_ms": statistics.median(r[0] for r in runs),
            "wall_ms": statistics.median(r[1] for r in runs),
        }

    try:
        rows: dict[str, Any] = {
            "vision": median(lambda: runtime.encode_image(image)),
            f"generation_{steps}_steps": median(
                lambda: runtime.generate("a red circle on the left", steps=steps, seed=0)
            ),
            f"edit_{steps}_steps": median(lambda: runtime.edit(image, "make it blue", steps=steps, seed=0)),
        }
        first: list[float] = []
        runtime.ask(image, "what is in the picture?", max_new_tokens=1)
        for _ in range(repeats):
            t0 = time.perf_counter()
            runtime.ask(image, "what is in the picture?", max_new_tokens=1)
            first.append((time.perf_counter() - t0) * 1000)
        backend.timings(reset=True)
        t0 = time.perf_counter()
        res = runtime.ask(image, "describe the picture in detail.", max_new_tokens=max_new_tokens)
        decode_s = time.perf_counter() - t0 - statistics.median(first) / 1000
        timings = backend.timings(reset=True)
        rows["first_token_ms"] = statistics.median(first)
        rows["decode_tokens_per_s"] = (
            (res.num_tokens - 1) / decode_s if res.num_tokens > 1 and decode_s > 0 else None
        )
        rows["decode_split"] = decode_split(timings)
        free_after, total = backend.memory_info()
        return {
            "backend": backend.describe(),
            "rows": rows,
            # device memory in use after all engines ran (on a Jetson this is shared with the CPU)
            "gpu_memory_gb": (total - free_after) / 2**30,
            "power": power_mode(),
            "targets": TARGETS,
        }
    finally:
        runtime.close()
