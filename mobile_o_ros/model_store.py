"""The model store: the cache folder, what a model argument names, and one export per checkpoint.

A model argument is a name or a path:

- ``embedded`` (or no argument): the shipped shapes model, ``mobile_o_ros/models/shapes``;
- ``tiny-random``: a tiny checkpoint with random weights, made once in the cache (answers are noise);
- a checkpoint folder (``config.json`` and safetensors weights);
- an export folder (``manifest.json`` and ONNX graphs).

A checkpoint's ONNX export is made once, under ``exports/<digest>`` in :func:`cache_dir`, keyed by the
checkpoint's sha256 (:func:`~mobile_o_ros.checkpoint_files.checkpoint_sha256`, first 16 hex digits); the
demo, the self-test, ``mobile-o serve`` and the CLI share it. Importing this module and resolving existing
exports need no torch; making an export or the tiny checkpoint imports it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mobile_o_ros.checkpoint_files import checkpoint_sha256
from mobile_o_ros.manifest import is_current

if TYPE_CHECKING:
    from mobile_o_ros.results import Pipeline

#: The shipped shapes model.
EMBEDDED = "embedded"
#: A tiny random checkpoint in the cache.
TINY_RANDOM = "tiny-random"
#: Model names :func:`resolve` accepts besides paths.
NAMES = (EMBEDDED, TINY_RANDOM)
#: Backends :func:`load_pipeline` opens; ``auto`` is torch for a checkpoint and onnxruntime for an export.
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: Hex digits of the checkpoint digest that name its cached export.
KEY_LENGTH = 16

Progress = Callable[[str], None]


class ModelError(ValueError):
    """A model argument that names no usable model; the message says what was looked for."""


@dataclass(frozen=True)
class Model:
    """A resolved model argument."""

    path: Path
    #: ``checkpoint`` or ``export``.
    kind: str
    #: One line for people: what the model is.
    description: str

    @property
    def is_export(self) -> bool:
        """Whether :attr:`path` is an export folder."""
        return self.kind == "export"


def cache_dir() -> Path:
    """Where the store keeps exports and the tiny checkpoint: ``$MOBILE_O_CACHE`` or
    ``~/.cache/mobile_o_ros``."""
    env = os.environ.get("MOBILE_O_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mobile_o_ros"


def embedded_model_dir() -> Path:
    """The folder of the shipped shapes checkpoint (absent weights in a tree where it is not trained yet)."""
    return Path(__file__).resolve().parent / "models" / "shapes"


def embedded_is_trained() -> bool:
    """Whether the shipped shapes checkpoint has its weights."""
    return (embedded_model_dir() / "model.safetensors").is_file()


def tiny_random_dir() -> Path:
    """The tiny random checkpoint, made on first use (needs torch)."""
    path = cache_dir() / "tiny_random"
    if not (path / "model.safetensors").is_file():
        from mobile_o_ros.reference.tiny import make_tiny_checkpoint

        make_tiny_checkpoint(path, seed=0)
    return path


def resolve(model: str | Path | None = None) -> Model:
    """What a model argument names: :data:`NAMES`, else a checkpoint or export folder. ``None`` is the
    embedded model. Raises :class:`ModelError`."""
    if model is None or str(model) == EMBEDDED:
        path = embedded_model_dir()
        if not embedded_is_trained():
            raise ModelError(
                f"the embedded model is not trained in this tree ({path} has no model.safetensors): "
                "train it with `mobile-o train-demo`, or give a checkpoint or export folder"
            )
        return Model(
            path,
            "checkpoint",
            "embedded shapes model (mobile_o_ros/models/shapes): a small Mobile-O trained from a seed on"
            " 2 CPU cores (~26 min on ours, up to ~2.5x that on slower ones); held-out scores in its"
            " MODEL_CARD.md",
        )
    if str(model) == TINY_RANDOM:
        return Model(tiny_random_dir(), "checkpoint", "tiny random checkpoint (answers and images are noise)")
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model not found: {model} (a checkpoint or export folder, or {', '.join(NAMES)})")
    if (path / "manifest.json").is_file():
        return Model(path, "export", f"export folder {path}")
    if (path / "config.json").is_file():
        return Model(path, "checkpoint", f"checkpoint {path}")
    raise ModelError(
        f"{model} is neither a checkpoint (config.json) nor an export folder (manifest.json)"
        if path.is_dir()
        else f"model must be a checkpoint or export folder: {model}"
    )


def export_key(checkpoint: Path) -> str:
    """The cache key of a checkpoint's export: the first :data:`KEY_LENGTH` hex digits of its sha256."""
    return checkpoint_sha256(checkpoint)[:KEY_LENGTH]


def cached_export_dir(checkpoint: Path) -> Path:
    """Where the store keeps ``checkpoint``'s export (made or not)."""
    return cache_dir() / "exports" / export_key(checkpoint)


def _is_export_of(export_dir: Path, sha: str) -> bool:
    """A complete export of a current manifest version, made from the checkpoint with digest ``sha``."""
    if not is_current(export_dir):
        return False
    try:
        manifest = json.loads((export_dir / "manifest.json").read_text())
        return manifest["source_checkpoint"]["sha256"] == sha
    except (OSError, ValueError, KeyError, TypeError):
        return False


def export_of(model: Model | str | Path | None = None, progress: Progress | None = None) -> Path:
    """The export folder of a model argument: itself when it is one, else the checkpoint's cached export,
    made on first use (an export of an older manifest version is made again)."""
    ref = model if isinstance(model, Model) else resolve(model)
    if ref.is_export:
        return ref.path
    sha = checkpoint_sha256(ref.path)
    out = cache_dir() / "exports" / sha[:KEY_LENGTH]
    if _is_export_of(out, sha):
        return out
    try:
        from mobile_o_ros.export.onnx_export import export_model
        from mobile_o_ros.reference.checkpoint import load_checkpoint
    except ImportError as err:
        raise ModelError(
            f"{ref.path} is a checkpoint without a cached export, and exporting it needs torch ({err}): "
            "install requirements/export.txt, or export it elsewhere with `mobile-o export`"
        ) from err
    if progress:
        progress(f"exporting {ref.path} to ONNX under {out} (once)")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    export_model(load_checkpoint(ref.path), tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def load_pipeline(
    model: Model | str | Path | None = None,
    backend: str = "auto",
    gen_dtype: str = "fp32",
    progress: Progress | None = None,
    export_checkpoint: bool = True,
) -> Pipeline:
    """A :class:`~mobile_o_ros.results.Pipeline` for a model argument on ``backend`` (:data:`BACKENDS`).

    torch runs a checkpoint with the reference pipelines (``gen_dtype``: the generation path's precision);
    onnxruntime and tensorrt run an export folder, or a checkpoint's cached export (:func:`export_of`; with
    ``export_checkpoint`` False a checkpoint is refused with the manifest's error instead).
    """
    ref = model if isinstance(model, Model) else resolve(model)
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r} ({', '.join(BACKENDS[1:])})")
    if backend == "auto":
        backend = "onnxruntime" if ref.is_export else "torch"
    if backend == "torch":
        if ref.is_export:
            raise ModelError(
                f"{ref.path} is an export folder: the torch backend needs a checkpoint "
                "(use --backend onnxruntime or tensorrt)"
            )
        from mobile_o_ros.reference.pipelines import ReferencePipeline

        return ReferencePipeline.load(ref.path, gen_dtype)
    from mobile_o_ros.runtime.engine import MobileORuntime

    export_dir = export_of(ref, progress) if export_checkpoint or ref.is_export else ref.path
    return MobileORuntime.load(export_dir, backend=backend)
