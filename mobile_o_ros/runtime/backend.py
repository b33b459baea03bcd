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


class KVCache:
    """Calls of a graph with ``kv_cache`` in and ``kv_cache_out`` out over one cache that the backend keeps.

    Each :meth:`run` feeds the cache the previous call wrote (zeros at first) and returns only the
    outputs asked for. This form keeps the cache as a host array and passes it through
    :meth:`Backend.run`; a device backend keeps it on the device instead.
    """

    def __init__(self, backend: Backend, graph: str, shape: tuple[int, ...]) -> None:
        self.backend, self.graph, self.shape = backend, graph, tuple(int(d) for d in shape)
        self.cache: np.ndarray | None = np.zeros(self.shape, np.float32)

    def run(
        self, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] = ("logits",)
    ) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds`` (every input but ``kv_cache``); keep ``kv_cache_out`` for the next."""
        if self.cache is None:
            raise BackendError(f"the KV cache of graph {self.graph!r} is closed")
        out = self.backend.run(self.graph, {**feeds, "kv_cache": self.cache})
        self.cache = out["kv_cache_out"]
        return {name: out[name] for name in outputs}

    def read(self) -> np.ndarray:
        """A host copy of the cache as the last call left it."""
        if self.cache is None:
            raise BackendError(f"the KV cache of graph {self.graph!r} is closed")
        return np.array(self.cache, dtype=np.float32, copy=True)

    def load(self, values: np.ndarray) -> None:
        """Replace the cache's contents with ``values`` (a host array of its shape), e.g. a prefix that an
        earlier cache computed, so the next call continues from it."""
        values = np.asarray(values, dtype=np.float32)
        if values.shape != self.shape:
            raise BackendError(f"KV cache of {self.graph!r} is {list(self.shape)}, got {list(values.shape)}")
        self.cache = values.copy()

    def close(self) -> None:
        """Drop the cache."""
        self.cache = None

    def __enter__(self) -> KVCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """Runs the exported graphs. One instance is owned and called by one worker thread."""

    name: str = "backend"

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` on ``feeds`` (name → array); return its outputs by name."""

    def kv_cache(self, graph: str, shape: tuple[int, ...]) -> KVCache:
        """A zeroed KV cache of ``shape`` [layers, 2, 1, kv_heads, capacity, head_dim] for ``graph``."""
        return KVCache(self, graph, shape)

    def describe(self) -> dict[str, Any]:
        """What the backend is running on, for logs and diagnostics."""
        return {"backend": self.name}

    @abstractmethod
    def close(self) -> None:
        """Free sessions/engines and device memory."""
