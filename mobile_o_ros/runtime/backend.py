"""The engine-backend interface the pipelines run on: named graphs with named numpy inputs and outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class BackendError(RuntimeError):
    """A graph call that cannot run; the message names the graph, the tensor and what was expected."""


def check_feeds(graph: str, spec: list[dict[str, Any]], feeds: dict[str, np.ndarray]) -> None:
    """Compare feeds with a manifest I/O spec: names, dtypes, ranks and fixed dimensions."""
    expected = {s["name"]: s for s in spec}
    if set(feeds) != set(expected):
        raise BackendError(f"graph {graph!r} takes inputs {sorted(expected)}, got {sorted(feeds)}")
    for name, value in feeds.items():
        s = expected[name]
        if value.dtype != np.dtype(s["dtype"]):
            raise BackendError(f"graph {graph!r} input {name!r} must be {s['dtype']}, got {value.dtype}")
        if value.ndim != len(s["shape"]) or any(
            isinstance(d, int) and d > 0 and d != v for d, v in zip(s["shape"], value.shape, strict=False)
        ):
            raise BackendError(
                f"graph {graph!r} input {name!r} must have shape {s['shape']}, got {list(value.shape)}"
            )


class Backend(ABC):
    """Runs the exported graphs. One instance is owned and called by one worker thread."""

    name: str = "backend"

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` on ``feeds`` (name → array); return its outputs by name."""

    def describe(self) -> dict[str, Any]:
        """What the backend is running on, for logs and diagnostics."""
        return {"backend": self.name}

    @abstractmethod
    def close(self) -> None:
        """Free sessions/engines and device memory."""
