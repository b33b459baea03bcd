"""ONNX Runtime backend: CPU, CUDA or the TensorRT execution provider, with configurable session options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.runtime.backend import Backend, BackendError, check_feeds

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` per graph, created once at load."""

    name = "onnxruntime"

    def __init__(
        self,
        export_dir: str | Path,
        manifest: dict[str, Any],
        providers: list[str] | tuple[str, ...] = ("cpu",),
        intra_op_num_threads: int = 0,
        graph_optimization: str = "all",
        graphs: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.export_dir = Path(export_dir)
        self.manifest = manifest
        available = set(ort.get_available_providers())
        self.providers = [PROVIDER_ALIASES.get(p, p) for p in providers]
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendError(f"onnxruntime lacks providers {missing}; available: {sorted(available)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_num_threads)
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if graph_optimization not in levels:
            raise BackendError(f"graph_optimization must be one of {sorted(levels)}")
        options.graph_optimization_level = levels[graph_optimization]
        self.sessions: dict[str, Any] = {}
        for name, meta in manifest["graphs"].items():
            if graphs is not None and name not in graphs:
                continue
            path = self.export_dir / meta["file"]
            try:
                self.sessions[name] = ort.InferenceSession(
                    str(path), sess_options=options, providers=self.providers
                )
            except Exception as err:  # onnxruntime raises its own exception classes
                raise BackendError(f"cannot load graph {name!r} from {path}: {err}") from err

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate feeds against the manifest, then run the session."""
        if graph not in self.sessions:
            raise BackendError(f"graph {graph!r} is not loaded (loaded: {sorted(self.sessions)})")
        check_feeds(graph, self.manifest["graphs"][graph]["inputs"], feeds)
        names = [o["name"] for o in self.manifest["graphs"][graph]["outputs"]]
        outputs = self.sessions[graph].run(names, feeds)
        return dict(zip(names, outputs, strict=False))

    def describe(self) -> dict[str, Any]:
        """Backend name and providers."""
        import onnxruntime as ort

        return {"backend": self.name, "version": ort.__version__, "providers": self.providers}

    def close(self) -> None:
        """Drop the sessions."""
        self.sessions.clear()
