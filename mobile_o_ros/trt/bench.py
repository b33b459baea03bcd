"""TensorRT rows of ``make bench``: the Jetson targets, measured with CUDA events and wall time.

Runs where ``tensorrt`` and ``pycuda`` import and engines exist (``mobile-o build-engines``). Not run on
the development machines (no TensorRT there); the code path is the production one: ``MobileORuntime`` on
``TensorRTBackend``.
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


class _Timer:
    """CUDA events around a host call, plus wall time."""

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda

    def __call__(self, fn) -> tuple[float, float]:
        start, end = self.cuda.Event(), self.cuda.Event()
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return end.time_since(start), (time.perf_counter() - t0) * 1000


def run_trt_bench(export_dir: Path, engine_dir: Path | None = None, repeats: int = 5) -> dict[str, Any]:
    """Per-component and whole-task latency (GPU ms from CUDA events, wall ms), memory and power mode."""
    import pycuda.driver as cuda

    from mobile_o_ros.runtime.engine import MobileORuntime

    runtime = MobileORuntime.load(export_dir, backend="tensorrt", engine_dir=engine_dir)
    timer = _Timer()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def median(fn) -> dict[str, float]:
        fn()  # warm-up
        runs = [timer(fn) for _ in range(repeats)]
        return {
            "gpu_ms": statistics.median(r[0] for r in runs),
            "wall_ms": statistics.median(r[1] for r in runs),
        }

    rows: dict[str, Any] = {
        "vision": median(lambda: runtime.encode_image(image)),
        "generation_20_steps": median(lambda: runtime.generate("a red circle on the left", steps=20, seed=0)),
        "edit_20_steps": median(lambda: runtime.edit(image, "make it blue", steps=20, seed=0)),
    }
    first: list[float] = []
    runtime.ask(image, "what is in the picture?", max_new_tokens=1)
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime.ask(image, "what is in the picture?", max_new_tokens=1)
        first.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    res = runtime.ask(image, "describe the picture in detail.", max_new_tokens=64)
    decode_s = time.perf_counter() - t0 - statistics.median(first) / 1000
    rows["first_token_ms"] = statistics.median(first)
    rows["decode_tokens_per_s"] = (
        (res.num_tokens - 1) / decode_s if res.num_tokens > 1 and decode_s > 0 else None
    )
    free_after, total = cuda.mem_get_info()
    report = {
        "backend": runtime.backend.describe(),
        "rows": rows,
        # device memory in use after all engines ran (on a Jetson this is shared with the CPU)
        "gpu_memory_gb": (total - free_after) / 2**30,
        "power": power_mode(),
        "targets": TARGETS,
    }
    runtime.close()
    return report
