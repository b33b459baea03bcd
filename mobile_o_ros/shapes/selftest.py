"""Task-level self-test on the shapes world (``mobile-o selftest``): VQA, generation and editing, scored.

- **VQA**: exact match (greedy decoding) of the one-word answer, on held-out scenes, per category (colour,
  shape, count, position, yes/no) and overall.
- **Generation**: captions of held-out scenes, images scored by :mod:`~mobile_o_ros.shapes.detector`
  GenEval-style (right shapes, colours, counts and positions; nothing extra), overall and by object count.
- **Editing**: held-out edit triples (recolour, remove, move) from a source render (:data:`RENDER_SIZE`);
  right when the asked change happened and the rest stayed, per kind and overall.

Every item uses fixed seeds and the same initial noise on every backend (drawn here with numpy and passed as
``latents``), so torch and ONNX Runtime runs are directly comparable. The default model is the embedded one
(:func:`mobile_o_ros.shapes.embedded_model_dir`); runtime backends use its ONNX export, built once and
cached under ``$MOBILE_O_CACHE`` or ``~/.cache/mobile_o_ros/``.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mobile_o_ros.runtime.sampling import initial_latents
from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.detector import score_edit, score_generation

#: Target scores of the embedded model (fractions).
TARGETS = {"vqa": 0.90, "generation": 0.80, "editing": 0.70}
#: Seed offsets inside the held-out range, one per task, so the three sets never share scenes.
VQA_OFFSET, GEN_OFFSET, EDIT_OFFSET = 0, 100_000, 200_000
#: Default items per task: VQA questions (100 per category), generation captions, edits (20 per kind).
DEFAULT_LIMITS = {"vqa": 500, "generation": 60, "editing": 60}
#: Side of the camera-like renders the self-test shows the model (it resizes them to its own input size).
RENDER_SIZE = 512

Progress = Callable[[str], None]


class Engine(Protocol):
    """What the self-test needs from a backend."""

    name: str
    latent_shape: tuple[int, ...]
    steps: int
    guidance: float

    def answer(self, image: np.ndarray, question: str) -> str:
        """Greedy answer to a question about an RGB image."""

    def generate(self, caption: str, latents: np.ndarray) -> np.ndarray:
        """An RGB image for a caption from the given initial noise [1, *latent_shape]."""

    def edit(self, image: np.ndarray, instruction: str, latents: np.ndarray) -> np.ndarray:
        """An edited RGB image from the given initial noise."""


@dataclass
class TorchEngine:
    """The PyTorch reference pipelines (fp32 by default)."""

    pipeline: Any
    steps: int = 20
    guidance: float = 1.5
    max_new_tokens: int = 8
    name: str = "torch"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the DiT's latents."""
        return tuple(self.pipeline.config.latent_shape)

    @classmethod
    def load(
        cls, model_dir: Path, steps: int | None = None, guidance: float | None = None, dtype: str = "fp32"
    ) -> TorchEngine:
        """Load a checkpoint folder strictly into the reference pipelines (``steps`` and ``guidance``
        default to the model's own, ``config.defaults``)."""
        import torch

        from mobile_o_ros.reference.checkpoint import load_checkpoint
        from mobile_o_ros.reference.pipelines import ReferencePipeline

        loaded = load_checkpoint(model_dir)
        gen_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        pipe = ReferencePipeline(loaded.model, loaded.tokenizer, gen_dtype=gen_dtype)
        d = loaded.config.defaults
        return cls(
            pipe,
            d.steps if steps is None else steps,
            d.guidance_scale if guidance is None else guidance,
            d.max_new_tokens,
        )

    def answer(self, image: np.ndarray, question: str) -> str:
        """Greedy VQA."""
        return self.pipeline.answer(image, question, max_new_tokens=self.max_new_tokens, temperature=0.0).text

    def generate(self, caption: str, latents: np.ndarray) -> np.ndarray:
        """Text to image."""
        import torch

        return self.pipeline.generate(caption, self.steps, self.guidance, latents=torch.from_numpy(latents))

    def edit(self, image: np.ndarray, instruction: str, latents: np.ndarray) -> np.ndarray:
        """Image editing."""
        import torch

        return self.pipeline.edit(
            image, instruction, self.steps, self.guidance, latents=torch.from_numpy(latents)
        )


@dataclass
class RuntimeEngine:
    """The torch-free runtime (ONNX Runtime or TensorRT) over an export folder."""

    runtime: Any
    steps: int = 20
    guidance: float = 1.5
    max_new_tokens: int = 8
    name: str = "onnxruntime"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the DiT's latents (from the export manifest)."""
        return tuple(self.runtime.latent_shape)

    @classmethod
    def load(
        cls, export_dir: Path, backend: str, steps: int | None = None, guidance: float | None = None
    ) -> RuntimeEngine:
        """Open an export folder with the named backend (``steps`` and ``guidance`` default to the model's
        own, from the export manifest)."""
        from mobile_o_ros.runtime.engine import MobileORuntime

        runtime = MobileORuntime.load(export_dir, backend=backend)
        d = runtime.defaults
        return cls(
            runtime,
            int(d["steps"]) if steps is None else steps,
            float(d["guidance_scale"]) if guidance is None else guidance,
            int(d["max_new_tokens"]),
            backend,
        )

    def answer(self, image: np.ndarray, question: str) -> str:
        """Greedy VQA."""
        return self.runtime.ask(image, question, max_new_tokens=self.max_new_tokens, temperature=0.0).answer

    def generate(self, caption: str, latents: np.ndarray) -> np.ndarray:
        """Text to image."""
        return self.runtime.generate(caption, self.steps, self.guidance, seed=0, latents=latents).image

    def edit(self, image: np.ndarray, instruction: str, latents: np.ndarray) -> np.ndarray:
        """Image editing."""
        return self.runtime.edit(image, instruction, self.steps, self.guidance, seed=0, latents=latents).image


# ------------------------------------------------------------------------------------------- model & cache
def cache_root() -> Path:
    """``$MOBILE_O_CACHE`` or ``~/.cache/mobile_o_ros``."""
    env = os.environ.get("MOBILE_O_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mobile_o_ros"


def cached_export(model_dir: Path, progress: Progress | None = None) -> Path:
    """The ONNX export of a checkpoint folder, built on first use under :func:`cache_root` (keyed by the
    checkpoint's sha256, so a changed checkpoint gets a fresh export)."""
    import json

    from mobile_o_ros.checkpoint_files import checkpoint_sha256
    from mobile_o_ros.manifest import is_current

    sha = checkpoint_sha256(model_dir)
    out = cache_root() / f"export-{model_dir.name}-{sha[:16]}"
    manifest = out / "manifest.json"
    if manifest.is_file() and is_current(out):
        try:
            if json.loads(manifest.read_text())["source_checkpoint"]["sha256"] == sha:
                return out
        except (ValueError, KeyError):
            pass
    from mobile_o_ros.export.onnx_export import export_model
    from mobile_o_ros.reference.checkpoint import load_checkpoint

    if progress:
        progress(f"exporting {model_dir} to ONNX under {out} (once)")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    export_model(load_checkpoint(model_dir), tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_engine(
    model: str | Path | None,
    backend: str = "torch",
    steps: int | None = None,
    guidance: float | None = None,
    progress: Progress | None = None,
) -> Engine:
    """An engine for a checkpoint folder (any backend: runtime backends export it, cached) or an export
    folder (runtime backends only). ``None``: the embedded model."""
    from mobile_o_ros.shapes import embedded_model_dir

    path = Path(model) if model is not None else embedded_model_dir()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    is_export = (path / "manifest.json").is_file()
    if backend == "torch":
        if is_export:
            raise ValueError("the torch backend needs a checkpoint folder, not an export folder")
        return TorchEngine.load(path, steps, guidance)
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"unknown backend {backend!r} (torch, onnxruntime, tensorrt)")
    export_dir = path if is_export else cached_export(path, progress)
    return RuntimeEngine.load(export_dir, backend, steps, guidance)


# ------------------------------------------------------------------------------------------- eval sets
def split(count: int, groups: tuple[str, ...]) -> dict[str, int]:
    """``count`` items shared over ``groups`` as evenly as possible (the first groups take the remainder)."""
    return {g: count // len(groups) + (1 if i < count % len(groups) else 0) for i, g in enumerate(groups)}


def vqa_items(count: int) -> list[tuple[world.Scene, world.Question]]:
    """``count`` held-out (scene, question) pairs shared over the categories (:func:`split`), one question
    per scene per category drawn in turn over held-out scenes."""
    quota = split(count, world.QUESTION_CATEGORIES)
    items: dict[str, list[tuple[world.Scene, world.Question]]] = defaultdict(list)
    i = 0
    while any(len(items[c]) < n for c, n in quota.items()):
        seed = world.HELDOUT_SEED_BASE + VQA_OFFSET + i
        scene = world.make_scene(seed)
        for q in world.questions(scene, random.Random(f"vqa:{seed}")):
            if len(items[q.category]) < quota[q.category]:
                items[q.category].append((scene, q))
        i += 1
    return [it for c in world.QUESTION_CATEGORIES for it in items[c]]


def generation_items(count: int) -> list[world.Scene]:
    """``count`` held-out scenes whose captions are generated."""
    return world.make_scenes("heldout", count, start=GEN_OFFSET)


def editing_items(count: int) -> list[world.Edit]:
    """``count`` held-out edits shared over the kinds (recolour, remove, move; :func:`split`)."""
    out: list[world.Edit] = []
    for kind, quota in split(count, world.EDIT_KINDS).items():
        n, i = 0, 0
        while n < quota:
            seed = world.HELDOUT_SEED_BASE + EDIT_OFFSET + 1000 * world.EDIT_KINDS.index(kind) + i
            scene = world.make_scene(seed)
            i += 1
            if kind == "remove" and len(scene.objects) < 2:
                continue
            out.append(world.make_edit(scene, random.Random(f"edit:{seed}"), kind))
            n += 1
    return out


def plan(limits: dict[str, int], tasks: tuple[str, ...]) -> list[str]:
    """What :func:`run_selftest` runs for ``limits`` (items per task), one line per task."""
    lines = []
    if "vqa" in tasks:
        shares = split(limits["vqa"], world.QUESTION_CATEGORIES)
        lines.append(
            f"VQA: {limits['vqa']} questions on held-out scenes ("
            + ", ".join(f"{n} {c}" for c, n in shares.items())
            + ")"
        )
    if "generation" in tasks:
        lines.append(f"generation: {limits['generation']} captions of held-out scenes")
    if "editing" in tasks:
        shares = split(limits["editing"], world.EDIT_KINDS)
        lines.append(
            f"editing: {limits['editing']} held-out edits ("
            + ", ".join(f"{n} {k}" for k, n in shares.items())
            + ")"
        )
    return lines


def noise(seed: int, latent_shape: tuple[int, ...]) -> np.ndarray:
    """The initial latents of an item: the noise of ``seed`` that every backend draws, [1, *latent_shape]."""
    return initial_latents(seed, latent_shape)


# ------------------------------------------------------------------------------------------- runs
def _rate(values: list[bool]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


def run_vqa(engine: Engine, count: int, progress: Progress | None = None) -> dict[str, Any]:
    """VQA exact-match accuracy over ``count`` questions, per category and overall (mean over all)."""
    per: dict[str, list[bool]] = defaultdict(list)
    wrong: list[dict[str, str]] = []
    images: dict[int, np.ndarray] = {}
    for scene, q in vqa_items(count):
        image = images.setdefault(scene.seed, world.render(scene, RENDER_SIZE))
        got = engine.answer(image, q.question).strip().lower()
        per[q.category].append(got == q.answer)
        if got != q.answer and len(wrong) < 10:
            wrong.append(
                {"question": q.question, "expected": q.answer, "got": got, "caption": world.caption(scene)}
            )
    out: dict[str, Any] = {c: _rate(per[c]) for c in world.QUESTION_CATEGORIES if per[c]}
    out["overall"] = _rate([v for c in per for v in per[c]])
    out["n"] = sum(len(v) for v in per.values())
    out["examples_wrong"] = wrong
    if progress:
        progress(f"vqa: {out['overall']:.3f} over {out['n']} questions")
    return out


def run_generation(
    engine: Engine, count: int, progress: Progress | None = None, save_dir: Path | None = None
) -> dict[str, Any]:
    """GenEval-style generation accuracy, overall and by number of objects, plus attribute rates."""
    by_n: dict[str, list[bool]] = defaultdict(list)
    attrs: dict[str, list[float]] = defaultdict(list)
    for k, scene in enumerate(generation_items(count)):
        image = engine.generate(world.caption(scene), noise(scene.seed, engine.latent_shape))
        s = score_generation(scene, image)
        by_n[f"{len(scene.objects)}_objects"].append(s.correct)
        for a in ("shapes", "colours", "positions", "sizes"):
            attrs[a].append(getattr(s, a))
        attrs["count"].append(float(s.count))
        attrs["background"].append(float(s.background))
        if save_dir is not None and k < 12:
            _save(save_dir / f"gen_{k:02d}_{'ok' if s.correct else 'bad'}.png", image)
    out: dict[str, Any] = {"overall": _rate([v for vs in by_n.values() for v in vs])}
    out.update({k: _rate(by_n[k]) for k in sorted(by_n)})
    out.update({k: round(float(np.mean(v)), 4) for k, v in attrs.items()})
    out["n"] = count
    if progress:
        progress(f"generation: {out['overall']:.3f} over {count} captions")
    return out


def run_editing(
    engine: Engine, count: int, progress: Progress | None = None, save_dir: Path | None = None
) -> dict[str, Any]:
    """Editing accuracy over ``count`` edits (change made and the rest kept), per kind and overall."""
    per: dict[str, list[bool]] = defaultdict(list)
    changed: list[bool] = []
    kept: list[bool] = []
    for k, e in enumerate(editing_items(count)):
        source = world.render(e.source, RENDER_SIZE)
        latents = noise(world.HELDOUT_SEED_BASE + EDIT_OFFSET + k, engine.latent_shape)
        image = engine.edit(source, e.instruction, latents)
        s = score_edit(e, image)
        per[e.kind].append(s.correct)
        changed.append(s.changed)
        kept.append(s.kept)
        if save_dir is not None and len(per[e.kind]) <= 4:
            _save(
                save_dir / f"edit_{k:02d}_{e.kind}_{'ok' if s.correct else 'bad'}.png",
                np.concatenate([world.render(e.source, image.shape[0]), image], axis=1),
            )
    out: dict[str, Any] = {kind: _rate(per[kind]) for kind in world.EDIT_KINDS if per[kind]}
    out["overall"] = _rate([v for vs in per.values() for v in vs])
    out["changed"] = _rate(changed)
    out["kept"] = _rate(kept)
    out["n"] = len(changed)
    if progress:
        progress(f"editing: {out['overall']:.3f} over {out['n']} edits")
    return out


def _save(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def run_selftest(
    engine: Engine,
    limits: dict[str, int] | None = None,
    tasks: tuple[str, ...] = ("vqa", "generation", "editing"),
    progress: Progress | None = None,
    save_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the chosen tasks on ``limits`` items each (default :data:`DEFAULT_LIMITS`); returns per-task
    results, overall scores and whether each meets its target."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    result: dict[str, Any] = {
        "backend": engine.name,
        "limits": limits,
        "sampling": {"steps": engine.steps, "guidance_scale": engine.guidance},
    }
    t0 = time.perf_counter()
    if "vqa" in tasks:
        result["vqa"] = run_vqa(engine, limits["vqa"], progress)
    if "generation" in tasks:
        result["generation"] = run_generation(engine, limits["generation"], progress, save_dir)
    if "editing" in tasks:
        result["editing"] = run_editing(engine, limits["editing"], progress, save_dir)
    result["scores"] = {t: result[t]["overall"] for t in ("vqa", "generation", "editing") if t in result}
    result["meets_targets"] = {t: bool(v >= TARGETS[t]) for t, v in result["scores"].items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_selftest` result."""
    sampling = result.get("sampling", {})
    lines = [
        f"backend: {result['backend']}  ({result['seconds']} s)  "
        f"steps {sampling.get('steps')}, CFG {sampling.get('guidance_scale')}"
    ]
    for task, keys in (
        ("vqa", [*world.QUESTION_CATEGORIES]),
        ("generation", None),
        ("editing", [*world.EDIT_KINDS, "changed", "kept"]),
    ):
        if task not in result:
            continue
        r = result[task]
        keys = keys or [k for k in r if k.endswith("_objects")] + ["shapes", "colours", "positions", "count"]
        detail = "  ".join(f"{k} {r[k]:.3f}" for k in keys if k in r)
        mark = "ok" if result["meets_targets"][task] else f"below target {TARGETS[task]:.2f}"
        lines.append(f"{task:<10} {r['overall']:.3f} (n={r['n']}, {mark})  {detail}")
    return "\n".join(lines)
