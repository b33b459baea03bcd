"""The machine a benchmark ran on, and whether it was busy: load average and CPU model around each row.

``make bench`` refuses to start when the 1-minute load average is above half the cores (other work would be
timed with ours); ``--allow-loaded`` runs anyway and marks every row ``loaded``. The load source is a
parameter so the refusal can be tested on any machine.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LoadSource = Callable[[], tuple[float, float, float]]
#: Above this fraction of the cores, the 1-minute load average makes a machine "loaded".
LOADED_FRACTION = 0.5


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` says)."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def snapshot(load: LoadSource = os.getloadavg) -> dict[str, Any]:
    """The load average (1, 5, 15 minutes), the CPU model, the core count and the wall time, now."""
    return {
        "load_average": [round(x, 2) for x in load()],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def is_loaded(load: LoadSource = os.getloadavg, cores: int | None = None) -> tuple[bool, str]:
    """(whether the 1-minute load exceeds :data:`LOADED_FRACTION` of ``cores``, a sentence saying so)."""
    cores = cores or os.cpu_count() or 1
    one = load()[0]
    limit = cores * LOADED_FRACTION
    loaded = one > limit
    word = "above" if loaded else "within"
    return loaded, f"1-minute load average {one:.2f} is {word} half of the {cores} cores ({limit:g})"


def check_machine(allow_loaded: bool, load: LoadSource = os.getloadavg, cores: int | None = None) -> str:
    """The start-of-run load sentence (:func:`is_loaded`); raises :class:`~mobile_o_ros.errors.CliError`
    (exit 2) when the machine is loaded and ``allow_loaded`` is False. A run with ``allow_loaded`` marks
    every row loaded: nothing guards it."""
    from mobile_o_ros.errors import CliError

    loaded, why = is_loaded(load, cores)
    if loaded and not allow_loaded:
        raise CliError(
            f"the machine is busy: {why}; timings would include other work. Wait for it to settle, or "
            "pass --allow-loaded to run anyway with every row marked loaded"
        )
    return why


def mark(row: dict[str, Any], before: dict[str, Any], after: dict[str, Any], loaded: bool) -> dict[str, Any]:
    """``row`` with the machine before and after it and its ``loaded`` flag."""
    return {**row, "machine_before": before, "machine_after": after, "loaded": loaded}
