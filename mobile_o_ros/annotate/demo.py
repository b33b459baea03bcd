"""The annotation part of ``make demo``: a small field recording, annotated, scored against its truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mobile_o_ros.annotate.fieldbag import make_field_bag, score
from mobile_o_ros.annotate.run import Options, annotate

#: Frames per camera of the demo's recording.
DEMO_FRAMES = 24


def annotate_demo(out_dir: Path, model: str | None, log: Any = print) -> dict[str, Any]:
    """Write ``field_bag/`` and annotate it into ``annotate/`` under ``out_dir``; returns figures and the
    contact sheet's path (relative to ``out_dir``)."""
    t0 = time.perf_counter()
    bag = out_dir / "field_bag"
    make_field_bag(bag, frames=DEMO_FRAMES)
    summary = annotate(Options([bag], bag / "tasks.yaml", out_dir / "annotate", model=model), log)
    scores = score(out_dir / "annotate", bag)
    return {
        "index": "annotate/index.html",
        "frames": summary["frames_annotated"] + summary["frames_failed"],
        "frames_failed": summary["frames_failed"],
        "records": summary["records"],
        "frames_per_second": summary["frames_per_second"],
        "bool_enum_right_pct": scores["bool_enum_right_pct"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
