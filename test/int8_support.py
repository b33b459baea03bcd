"""Shared by the int8 tests: an int8 copy of an export, calibrated on the shapes world (two items)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

#: The tiny export's graphs, in manifest order.
GRAPHS = ("vision", "llm", "mcp", "dit", "vae_decoder")


def quantized_copy(src: Path, dst: Path, **options: Any) -> dict[str, Any]:
    """Copy the export ``src`` to ``dst`` and quantize the copy (``options`` go to ``quantize_export``);
    returns the manifest's ``quantization`` section."""
    from mobile_o_ros.export import quantize
    from mobile_o_ros.shapes.calibration import shapes_set

    shutil.copytree(src, dst)
    calibration = shapes_set(items=2, render_size=128)
    return quantize.quantize_export(dst, calibration, steps=2, min_seconds=0.0, log=lambda s: None, **options)
