"""Calibration data for int8 graphs: what the model is asked, and each graph's inputs recorded on the way.

A :class:`CalibrationSet` holds images, generation prompts, questions and edit instructions. It comes from a
folder the user supplies (``images/*.png|jpg`` and ``prompts.txt``, :func:`folder_set`) or, by default, from
the shapes world's training split (:func:`mobile_o_ros.shapes.calibration.shapes_set`).
:func:`collect_feeds` runs the set through the fp32 export (answers, images, edits) and records every graph
call's inputs, so each graph is calibrated on what the pipeline really feeds it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.runtime.backend import Backend, KVCache

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Denoising steps of each calibration image (each step's DiT inputs are recorded).
DEFAULT_STEPS = 8
#: Recorded calls kept per graph (evenly spread over all calls) so calibration stays bounded.
MAX_FEEDS_PER_GRAPH = 32


class CalibrationError(ValueError):
    """A calibration folder that cannot be used; the message says what is missing."""


@dataclass
class CalibrationSet:
    """Inputs to run through the pipeline: ``images`` (RGB uint8), ``questions`` about them, generation
    ``prompts`` and edit ``instructions`` (applied to the images in turn)."""

    images: list[np.ndarray]
    questions: list[str]
    prompts: list[str]
    instructions: list[str]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Counts and where the set came from (for the manifest)."""
        return {
            "source": self.source,
            "images": len(self.images),
            "questions": len(self.questions),
            "prompts": len(self.prompts),
            "instructions": len(self.instructions),
            **self.meta,
        }


def folder_set(folder: str | Path, default_question: str = "Describe the picture.") -> CalibrationSet:
    """A set from ``folder``: ``images/*.png|jpg`` and ``prompts.txt`` (one prompt per line; blank lines and
    lines starting with ``#`` are skipped). The prompts serve as generation prompts; a line starting with
    ``Q:`` is a question about the images and one starting with ``E:`` an edit instruction (defaults:
    ``default_question`` and the generation prompts themselves as instructions)."""
    import cv2

    folder = Path(folder)
    image_dir, prompt_file = folder / "images", folder / "prompts.txt"
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder not found: {folder}")
    paths = (
        sorted(p for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if image_dir.is_dir()
        else []
    )
    if not paths:
        raise CalibrationError(f"{folder} has no images/*.png or images/*.jpg for calibration")
    if not prompt_file.is_file():
        raise CalibrationError(f"{folder} has no prompts.txt (one prompt per line) for calibration")
    images = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None or bgr.size == 0:
            raise CalibrationError(f"cannot read calibration image {p}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    lines = [ln.strip() for ln in prompt_file.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    questions = [ln[2:].strip() for ln in lines if ln.startswith("Q:")]
    instructions = [ln[2:].strip() for ln in lines if ln.startswith("E:")]
    prompts = [ln for ln in lines if not ln.startswith(("Q:", "E:"))]
    if not prompts:
        raise CalibrationError(f"{prompt_file} has no generation prompts")
    return CalibrationSet(
        images, questions or [default_question], prompts, instructions or prompts[:], f"folder {folder}"
    )


def write_folder(calibration: CalibrationSet, folder: str | Path) -> Path:
    """Write ``calibration`` in the folder layout :func:`folder_set` reads; returns the folder."""
    import cv2

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(calibration.images):
        cv2.imwrite(str(folder / "images" / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    lines = [*calibration.prompts, *(f"Q: {q}" for q in calibration.questions)]
    lines += [f"E: {e}" for e in calibration.instructions]
    (folder / "prompts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


class RecordingBackend(Backend):
    """Runs every call on ``inner`` and keeps a copy of each graph's feeds."""

    name = "recording"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Record ``feeds`` (copied) and run them on the inner backend."""
        self.feeds[graph].append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(graph, feeds)

    def kv_cache(self, graph: str, shape: tuple[int, ...]) -> KVCache:
        """A host KV cache whose calls go through :meth:`run` (so they are recorded)."""
        return KVCache(self, graph, shape)

    def describe(self) -> dict[str, Any]:
        """The inner backend's description."""
        return self.inner.describe()

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()


def spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spread (first and last kept)."""
    if len(items) <= limit:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in idx]


def collect_feeds(
    export_dir: str | Path,
    calibration: CalibrationSet,
    steps: int = DEFAULT_STEPS,
    max_new_tokens: int = 8,
    limit: int = MAX_FEEDS_PER_GRAPH,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each graph's recorded inputs from running ``calibration`` on the fp32 export in ``export_dir``.

    Questions are answered greedily (prefill and decode calls of the ``llm`` graph), prompts generated and
    instructions applied to the images at ``steps`` denoising steps (every DiT call, the MCP and the VAE).
    At most ``limit`` calls per graph are kept, evenly spread.
    """
    from mobile_o_ros.runtime.engine import MobileORuntime

    runtime = MobileORuntime.load(export_dir, backend="onnxruntime")
    recorder = RecordingBackend(runtime.backend)
    runtime.backend = recorder
    try:
        images = calibration.images
        for i, question in enumerate(calibration.questions):
            runtime.ask(
                images[i % len(images)], question, max_new_tokens=max_new_tokens, temperature=0.0, seed=0
            )
        for i, prompt in enumerate(calibration.prompts):
            runtime.generate(prompt, steps=steps, seed=i)
        for i, instruction in enumerate(calibration.instructions):
            runtime.edit(images[i % len(images)], instruction, steps=steps, seed=i)
    finally:
        runtime.close()
    return {graph: spread(feeds, limit) for graph, feeds in recorder.feeds.items()}
