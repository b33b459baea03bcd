"""Task-level self-test on the shapes world (``mobile-o selftest``): VQA, generation and editing, scored.

- **VQA**: exact match (greedy decoding) of the one-word answer, on held-out scenes, per category (colour,
  shape, count, position, yes/no) and overall.
- **Generation**: captions of held-out scenes, images scored by :mod:`~mobile_o_ros.shapes.detector`
  GenEval-style (right shapes, colours, counts and positions; nothing extra), overall and by object count.
- **Editing**: held-out edit triples (recolour, remove, move) from a source render (:data:`RENDER_SIZE`);
  right when the asked change happened and the rest stayed, per kind and overall.

Every item uses fixed seeds and the same initial noise on every backend (drawn here with numpy and passed as
``latents``), so torch and ONNX Runtime runs are directly comparable. Any
:class:`~mobile_o_ros.results.Pipeline` runs it: the torch reference on a checkpoint, or the runtime on an
export. The default model is the embedded one; runtime backends use its ONNX export from the model store
(:mod:`mobile_o_ros.model_store`), made once and cached.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.results import Pipeline
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
#: The seed every generation and edit reports; the noise itself is the item's (:func:`noise`).
ITEM_SEED = 0

Progress = Callable[[str], None]


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


def run_vqa(pipeline: Pipeline, count: int, progress: Progress | None = None) -> dict[str, Any]:
    """VQA exact-match accuracy over ``count`` questions (greedy answers of the model's default length),
    per category and overall (mean over all)."""
    per: dict[str, list[bool]] = defaultdict(list)
    wrong: list[dict[str, str]] = []
    images: dict[int, np.ndarray] = {}
    for scene, q in vqa_items(count):
        image = images.setdefault(scene.seed, world.render(scene, RENDER_SIZE))
        got = pipeline.ask(image, q.question, temperature=0.0, seed=ITEM_SEED).answer.strip().lower()
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
    pipeline: Pipeline,
    count: int,
    progress: Progress | None = None,
    save_dir: Path | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> dict[str, Any]:
    """GenEval-style generation accuracy, overall and by number of objects, plus attribute rates
    (``steps`` and ``guidance_scale`` None: the model's defaults)."""
    by_n: dict[str, list[bool]] = defaultdict(list)
    attrs: dict[str, list[float]] = defaultdict(list)
    for k, scene in enumerate(generation_items(count)):
        image = pipeline.generate(
            world.caption(scene),
            steps,
            guidance_scale,
            seed=ITEM_SEED,
            latents=noise(scene.seed, pipeline.latent_shape),
        ).image
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
    pipeline: Pipeline,
    count: int,
    progress: Progress | None = None,
    save_dir: Path | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> dict[str, Any]:
    """Editing accuracy over ``count`` edits (change made and the rest kept), per kind and overall
    (``steps`` and ``guidance_scale`` None: the model's defaults)."""
    per: dict[str, list[bool]] = defaultdict(list)
    changed: list[bool] = []
    kept: list[bool] = []
    for k, e in enumerate(editing_items(count)):
        source = world.render(e.source, RENDER_SIZE)
        latents = noise(world.HELDOUT_SEED_BASE + EDIT_OFFSET + k, pipeline.latent_shape)
        image = pipeline.edit(
            source, e.instruction, steps, guidance_scale, seed=ITEM_SEED, latents=latents
        ).image
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
    pipeline: Pipeline,
    limits: dict[str, int] | None = None,
    tasks: tuple[str, ...] = ("vqa", "generation", "editing"),
    progress: Progress | None = None,
    save_dir: Path | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> dict[str, Any]:
    """Run the chosen tasks on ``limits`` items each (default :data:`DEFAULT_LIMITS`), sampling with
    ``steps`` and ``guidance_scale`` (None: the model's defaults); returns per-task results, overall scores
    and whether each meets its target."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    d = pipeline.defaults
    result: dict[str, Any] = {
        "backend": pipeline.name,
        "limits": limits,
        "sampling": {
            "steps": d.steps if steps is None else steps,
            "guidance_scale": d.guidance_scale if guidance_scale is None else guidance_scale,
        },
    }
    t0 = time.perf_counter()
    if "vqa" in tasks:
        result["vqa"] = run_vqa(pipeline, limits["vqa"], progress)
    if "generation" in tasks:
        result["generation"] = run_generation(
            pipeline, limits["generation"], progress, save_dir, steps, guidance_scale
        )
    if "editing" in tasks:
        result["editing"] = run_editing(
            pipeline, limits["editing"], progress, save_dir, steps, guidance_scale
        )
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
