"""What the TensorRT rows of ``make bench`` (:func:`mobile_o_ros.bench.run_trt_bench`) and ``mobile-o
gpu-report`` measure with: the Jetson targets, a call's GPU and wall time, a decode step's split and the
power mode.

GPU time comes from the backend itself (``timing=True``): CUDA events recorded on its own stream around
each call's copies and enqueue, read in its own context. Nothing here calls pycuda directly: the backend
pops its context after every call, so a bare ``cuda.Event()`` or ``cuda.mem_get_info()`` would have no
current context.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

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
