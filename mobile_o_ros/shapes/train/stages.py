"""The paper's training stages of the shapes model, each a function over the model and the recipe.

(a) :func:`train_autoencoder`, (b1) :func:`pretrain_vision`, (b2) :func:`train_vqa`, (c0)
:func:`train_conditioning`, (c) :func:`train_dit`, (d) :func:`train_joint`. Each returns a
:class:`StageReport`. Stages (c0), (c) and (d) also run as one rank of a data-parallel group: each rank
draws :func:`mobile_o_ros.shapes.parallel.share` of every batch and :func:`_update` averages the gradients.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mobile_o_ros import prompts
from mobile_o_ros.reference.model import MobileO
from mobile_o_ros.shapes import parallel, world
from mobile_o_ros.shapes.train.data import (
    Cache,
    PromptTokens,
    edit_batch,
    gen_batch,
    join_conditioning,
    label_heads,
    seed_stream,
    short_vqa_prompt,
    token_labels,
    vae_input,
    vision_input,
)
from mobile_o_ros.shapes.train.losses import (
    caption_qa_loss,
    copy_attention_loss,
    cross_attention_probs,
    cross_attention_tap,
    dense_loss,
    flow_loss,
    image_vqa_loss,
    image_vqa_losses,
)
from mobile_o_ros.shapes.train.probe import ConditioningProbe, probe_loss, slot_labels
from mobile_o_ros.shapes.train.recipe import Log, Recipe


@dataclass
class StageReport:
    """What one stage did."""

    name: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Steps, time and the mean loss over the first and last tenth of the steps (at least 3 if any)."""
        n = len(self.losses)
        k = max(1, min(n // 3, max(3, n // 10)))
        head = float(np.mean(self.losses[:k])) if self.losses else float("nan")
        tail = float(np.mean(self.losses[-k:])) if self.losses else float("nan")
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "loss_first": round(head, 5),
            "loss_last": round(tail, 5),
            **self.extra,
        }


# ------------------------------------------------------------------------------------------- helpers
def _schedule(
    opt: torch.optim.Optimizer, total: int, warmup_frac: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(total * warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _recent(losses: list[float], n: int) -> float:
    return float(np.mean(losses[-n:]))


def _params(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _set_trainable(model: MobileO, names: Sequence[str]) -> None:
    for name in ("vision", "mm_projector", "llm", "mcp", "dit", "vae"):
        model.component(name).requires_grad_(name in names)
    model.vision.head_proj.requires_grad_(False)


def _update(
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
    params: Sequence[torch.nn.Parameter],
    clip: float = 1.0,
) -> float:
    """One training step of every stage: backward, (data-parallel: average the gradients over the ranks),
    clip the gradient norm of ``params``, step, schedule. Returns the loss (its mean over the ranks)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    value = parallel.average_gradients(params, loss)
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
    return value


# ------------------------------------------------------------------------------------------- stages
def train_autoencoder(model: MobileO, recipe: Recipe, rng: random.Random, log: Log) -> StageReport:
    """Stage (a): DC-AE reconstruction of whole renders at the decoder's output size; sets
    ``scaling_factor`` (1 / std of the latents, as SANA's 0.41407).

    The loss weights object pixels (those that differ from the background) ``1 + ae_object_weight``
    times: objects cover a tenth of a scene, and with a plain mean the decoder first learns the
    backgrounds and blurs the corners that tell a square from a circle. Measured: 400 steps reconstruct
    98% of held-out scenes so that the detector reads every object right."""
    vae = model.vae
    _set_trainable(model, ["vae"])
    vae.train()
    size = model.config.output_size
    params = _params(vae)
    opt = torch.optim.AdamW(params, lr=recipe.ae_lr, weight_decay=0.0)
    sched = _schedule(opt, recipe.ae_steps, recipe.warmup_frac)
    seeds = seed_stream(rng)
    report = StageReport("autoencoder", recipe.ae_steps, 0.0)
    t0 = time.perf_counter()
    for step in range(recipe.ae_steps):
        x = torch.stack(
            [vae_input(world.render(world.make_scene(next(seeds)), size)) for _ in range(recipe.ae_batch)]
        )
        z = vae.encode(x).latent
        r = vae.decode(z).sample
        on_object = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True).gt(0.05).float()
        w = 1 + recipe.ae_object_weight * on_object
        loss = ((r - x).pow(2) * w).mean() + 0.5 * ((r - x).abs() * w).mean()
        _update(opt, sched, loss + recipe.ae_latent_l2 * z.pow(2).mean(), params, recipe.ae_clip)
        report.losses.append(loss.item())
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.ae_steps:
            log(
                f"[a] autoencoder step {step + 1}/{recipe.ae_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    vae.eval()
    with torch.no_grad():
        x = torch.stack([vae_input(world.render(world.make_scene(next(seeds)), size)) for _ in range(32)])
        std = float(vae.encode(x).latent.std())
    model.config.vae["scaling_factor"] = round(1.0 / std, 5)
    report.seconds = time.perf_counter() - t0
    report.extra["scaling_factor"] = model.config.vae["scaling_factor"]
    log(f"[a] scaling_factor = {model.config.vae['scaling_factor']} ({report.seconds:.0f} s)")
    return report


def pretrain_vision(model: MobileO, recipe: Recipe, rng: random.Random, log: Log) -> StageReport:
    """Stage (b1): the vision tower on dense per-token labels through a throw-away linear head (it stands in
    for MobileCLIP pre-training): under each image token, the colour, shape, size and named position of
    the object there, the token's row and column, and the background (:func:`token_labels`).

    The row and column matter for editing: the DiT rebuilds the source image from the image tokens'
    hidden states through cross-attention, which carries no positions of its own. Measured: 150 steps get
    all four object attributes of 97-99% of the object tokens right."""
    _set_trainable(model, ["vision"])
    tower = model.vision
    tower.train()
    size = model.config.image_size
    grid = round(model.config.num_image_tokens**0.5)
    head = torch.nn.Linear(model.config.mm_hidden_size, sum(label_heads(grid)))
    params = _params(tower, head)
    opt = torch.optim.AdamW(params, lr=recipe.vis_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.vis_steps, recipe.warmup_frac)
    seeds = seed_stream(rng)
    report = StageReport("vision", recipe.vis_steps, 0.0)
    accuracy: list[float] = []
    t0 = time.perf_counter()
    for step in range(recipe.vis_steps):
        scenes = [world.make_scene(next(seeds)) for _ in range(recipe.vis_batch)]
        x = torch.stack([vision_input(world.render(sc, 512), size) for sc in scenes])
        labels = torch.from_numpy(np.stack([token_labels(sc, grid) for sc in scenes]))
        loss, right = dense_loss(head(tower(x)), labels, grid)
        _update(opt, sched, loss, params)
        report.losses.append(loss.item())
        accuracy.append(float(right.float().mean()))
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.vis_steps:
            log(
                f"[b1] vision step {step + 1}/{recipe.vis_steps} loss "
                f"{_recent(report.losses, recipe.log_every):.4f} object tokens right "
                f"{_recent(accuracy, recipe.log_every):.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    tower.eval()
    report.seconds = time.perf_counter() - t0
    report.extra["object_tokens_right_last"] = round(_recent(accuracy, max(1, recipe.vis_steps // 10)), 4)
    return report


def train_vqa(
    model: MobileO, tok: PromptTokens, cache: Cache, recipe: Recipe, rng: random.Random, log: Log
) -> StageReport:
    """Stage (b2): projector + LLM on questions about the cached source images (tower frozen) and, text
    only, about captions (:func:`caption_qa_loss`: the LLM learns to bind each object's words, which the
    MCP and the DiT read in stage (c)).

    The first ``vlm_short_steps`` use a short format without the chat template (:func:`short_vqa_prompt`,
    :func:`caption_qa_parts`), then the real templates. Measured: with the templates from the start a
    4-layer LLM sat at type-guessing (answer loss ~0.55) for 300 steps; after the short warm-up it moves
    on within tens of steps (the long shared template prefix hides which tokens matter)."""
    _set_trainable(model, ["mm_projector", "llm"])
    model.llm.train()
    params = _params(model.mm_projector, model.llm)
    opt = torch.optim.AdamW(params, lr=recipe.vlm_lr, weight_decay=0.01)
    total = recipe.vlm_short_steps + recipe.vlm_steps
    sched = _schedule(opt, total, recipe.warmup_frac)
    seeds = seed_stream(rng)
    report = StageReport("vqa", total, 0.0)
    cap_losses: list[float] = []
    att_losses: list[float] = []
    t0 = time.perf_counter()
    m = len(cache.sources)
    for step in range(total):
        short = step < recipe.vlm_short_steps
        idx = [rng.randrange(m) for _ in range(recipe.vlm_images)]
        template = short_vqa_prompt if short else prompts.vqa_prompt
        loss, attention = image_vqa_losses(model, tok, cache, idx, rng, recipe, recipe.vlm_rounds, template)
        scenes = [world.make_scene(next(seeds)) for _ in range(recipe.vlm_captions)]
        cap = caption_qa_loss(model, tok, scenes, rng, short)
        _update(opt, sched, loss + cap + recipe.vqa_attention_weight * attention, params)
        report.losses.append(loss.item())
        cap_losses.append(cap.item())
        att_losses.append(float(attention.detach()))
        if (step + 1) % recipe.log_every == 0 or step + 1 == total:
            log(
                f"[b2] vqa step {step + 1}/{total} ({'short' if short else 'chat'} format) "
                f"image {_recent(report.losses, recipe.log_every):.4f} "
                f"caption {_recent(cap_losses, recipe.log_every):.4f} "
                f"attention {_recent(att_losses, recipe.log_every):.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    model.llm.eval()
    report.seconds = time.perf_counter() - t0
    k = max(1, recipe.vlm_steps // 10)
    report.extra["caption_qa_last"] = round(_recent(cap_losses, k), 5)
    report.extra["attention_last"] = round(_recent(att_losses, k), 5)
    return report


def train_conditioning(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    probe: ConditioningProbe,
    recipe: Recipe,
    rng: random.Random,
    log: Log,
) -> StageReport:
    """Stage (c0): the LLM and the MCP (with the :class:`ConditioningProbe`) so that the conditioning of a
    caption, and of an edit prompt with its source image, says what the target scene shows where, while
    ``ce_weight`` × the VQA loss on ``cond_vqa`` images per step keeps the LLM answering; no DiT."""
    _set_trainable(model, ["mm_projector", "llm", "mcp"])
    for m in (model.mm_projector, model.llm, model.mcp, probe):
        m.train()
    core = _params(model.mcp, probe)
    vlm = _params(model.mm_projector, model.llm)
    opt = torch.optim.AdamW(
        [{"params": core}, {"params": vlm, "lr": recipe.cond_llm_lr}], lr=recipe.cond_lr, weight_decay=0.01
    )
    sched = _schedule(opt, recipe.cond_steps, recipe.warmup_frac)
    report = StageReport("conditioning", recipe.cond_steps, 0.0)
    read: list[float] = []  # this rank's fraction of slots the probe reads right
    read_edit: list[float] = []
    t0 = time.perf_counter()
    n, m = len(cache.scenes), len(cache.sources)
    for step in range(recipe.cond_steps):
        gi = [rng.randrange(n) for _ in range(parallel.share(recipe.cond_batch))]
        ei = [rng.randrange(m) for _ in range(parallel.share(recipe.cond_edits))]
        c1, m1, _, _ = gen_batch(model, tok, cache, gi, rng, 0.0, train_llm=True)
        c2, m2, _, _ = edit_batch(model, tok, cache, ei, rng, 0.0, train_llm=True)
        l_gen, r_gen = probe(c1, m1, torch.stack([slot_labels(cache.scenes[i]) for i in gi]))
        l_edit, r_edit = probe(c2, m2, torch.stack([slot_labels(cache.sources[i].target) for i in ei]))
        vi = [rng.randrange(m) for _ in range(parallel.share(recipe.cond_vqa))]  # none: image_vqa_loss → 0
        l_vqa = image_vqa_loss(model, tok, cache, vi, rng, recipe)
        report.losses.append(_update(opt, sched, l_gen + l_edit + recipe.ce_weight * l_vqa, core + vlm))
        read.append(float(r_gen))
        read_edit.append(float(r_edit))
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.cond_steps:
            log(
                f"[c0] conditioning step {step + 1}/{recipe.cond_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} "
                f"slots read: captions {_recent(read, recipe.log_every):.3f} "
                f"edits {_recent(read_edit, recipe.log_every):.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    for m in (model.mm_projector, model.llm, model.mcp):
        m.eval()
    report.seconds = time.perf_counter() - t0
    k = max(1, recipe.cond_steps // 10)
    report.extra["caption_slots_right_last"] = round(_recent(read, k), 4)
    report.extra["edit_slots_right_last"] = round(_recent(read_edit, k), 4)
    return report


def _flow_rows(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    gi: Sequence[int],
    ei: Sequence[int],
    rng: random.Random,
    gen: torch.Generator,
    recipe: Recipe,
    train_llm: bool,
    probe: ConditioningProbe | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions of cached scenes ``gi`` and edits ``ei`` in one DiT batch → (the flow loss per row [B], the
    auxiliary losses: ``probe_weight`` × the ``probe``'s on the conditional rows, ``dit_copy_weight`` × the
    copy loss on the conditional edit rows, and ``dit_referent_weight`` × the probe's referent loss on
    them)."""
    c1, m1, x1, k1 = gen_batch(model, tok, cache, gi, rng, recipe.uncond_prob, train_llm=train_llm)
    parts, x0 = [(c1, m1)], [x1]
    l_probe = probe_loss(probe, c1, m1, k1, [cache.scenes[i] for i in gi])
    if ei:
        c2, m2, x2, k2 = edit_batch(model, tok, cache, ei, rng, recipe.uncond_prob, train_llm=train_llm)
        parts.append((c2, m2))
        x0.append(x2)
        l_probe = l_probe + probe_loss(probe, c2, m2, k2, [cache.sources[i].target for i in ei])
    cond, mask = join_conditioning(parts)
    weight = cache.flow_weights(gi, ei, recipe.dit_object_weight, recipe.dit_edit_source_weight)
    shift, high = recipe.train_shift, recipe.high_noise
    layers = recipe.dit_copy_layers if recipe.dit_copy_weight > 0 and ei else ()
    has_head = probe is not None and probe.referent is not None
    referent = bool(ei) and has_head and recipe.dit_referent_weight > 0
    content = probe is not None and probe.content is not None and recipe.dit_content_weight > 0
    tapped = sorted(
        {*layers}
        | ({recipe.dit_referent_layer} if referent else set())
        | ({recipe.dit_content_layer} if content else set())
    )
    with cross_attention_tap(model, tapped) as seen:
        rows = flow_loss(model, torch.cat(x0), cond, mask, gen, shift, high, per_row=True, weight=weight)
    aux = recipe.probe_weight * l_probe
    if layers:
        # The image placeholder precedes the instruction, so every edit row's image tokens start at the same
        # index (image_prompt tokenizes the text before it apart from the rest).
        first = tok.image_prompt(prompts.edit_prompt(cache.sources[ei[0]].instruction))
        start = [first.index(prompts.IMAGE_TOKEN_INDEX)] * len(ei)
        tokens = cache.source_feats.shape[1]  # image tokens per source = latent cells, as checked below
        grid = int(tokens**0.5)
        maps = torch.stack([cache.copy_map(i, grid, recipe.dit_copy_changed) for i in ei]) & k2[:, None, None]
        rows_e = slice(len(gi), None)
        for layer in layers:
            module, hidden, kv, bias = seen[layer]
            bias_e = None if bias is None else bias[rows_e]
            probs = cross_attention_probs(module, hidden[rows_e], kv[rows_e], bias_e)
            if probs.shape[2] != tokens:
                raise ValueError(f"copy loss: {probs.shape[2]} latent cells but {tokens} image tokens")
            aux = aux + recipe.dit_copy_weight * copy_attention_loss(probs, start, maps)
    if referent and bool(k2.any()):
        hidden = seen[recipe.dit_referent_layer][1][len(gi) :][k2]
        grid = round(hidden.shape[1] ** 0.5)
        conditional = [i for i, k in zip(ei, k2.tolist(), strict=True) if k]
        cells = torch.stack([cache.referent_cells(i, grid) for i in conditional])
        aux = aux + recipe.dit_referent_weight * probe.referent_loss(hidden, cells)
    keep = torch.cat([k1, k2]) if ei else k1
    if content and bool(keep.any()):
        hidden = seen[recipe.dit_content_layer][1][keep]
        grid = round(hidden.shape[1] ** 0.5)
        targets = [*gi, *(cache.source_latent_index[i] for i in ei)]
        labels = torch.stack(
            [cache.content_labels(j, grid) for j, k in zip(targets, keep.tolist(), strict=True) if k]
        )
        aux = aux + recipe.dit_content_weight * probe.content_loss(hidden, labels)
    return rows, aux


def train_dit(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    recipe: Recipe,
    rng: random.Random,
    log: Log,
    probe: ConditioningProbe | None = None,
) -> StageReport:
    """Stage (c): the DiT (and the MCP when ``recipe.dit_train_mcp``) by rectified flow on captions, the
    VLM frozen; with a ``probe``, ``probe_weight`` × its loss keeps the conditioning readable."""
    names = ["dit"] + (["mcp"] if recipe.dit_train_mcp else []) + (["llm"] if recipe.dit_train_llm else [])
    _set_trainable(model, names)
    model.dit.train()
    groups: list[dict[str, Any]] = [{"params": _params(model.dit)}]
    if recipe.dit_train_mcp:
        model.mcp.train()
        lw = [model.mcp.fusion.layer_weights]
        groups[0]["params"] += [p for p in _params(model.mcp) if p is not lw[0]]
        groups.append({"params": lw, "lr": recipe.dit_lr * 10, "weight_decay": 0.0})
        if probe is not None:
            probe.train()
            groups[0]["params"] += _params(probe)
    if recipe.dit_train_llm:
        model.llm.train()
        groups.append({"params": _params(model.llm), "lr": recipe.joint_llm_lr})
    opt = torch.optim.AdamW(groups, lr=recipe.dit_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.dit_steps, recipe.warmup_frac)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    report = StageReport("dit", recipe.dit_steps, 0.0)
    t0 = time.perf_counter()
    n, m = len(cache.scenes), len(cache.sources)
    read_out = probe if recipe.dit_train_mcp else None
    for step in range(recipe.dit_steps):
        gi = [rng.randrange(n) for _ in range(parallel.share(recipe.dit_batch))]
        ei = [rng.randrange(m) for _ in range(parallel.share(recipe.dit_edits))]
        train_llm = recipe.dit_train_llm
        rows, aux = _flow_rows(model, tok, cache, gi, ei, rng, gen, recipe, train_llm, read_out)
        loss = rows.mean() + aux
        report.losses.append(_update(opt, sched, loss, [p for g in groups for p in g["params"]]))
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.dit_steps:
            log(
                f"[c] dit step {step + 1}/{recipe.dit_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    model.dit.eval()
    model.mcp.eval()
    model.llm.eval()
    report.seconds = time.perf_counter() - t0
    return report


def train_joint(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    recipe: Recipe,
    rng: random.Random,
    log: Log,
    probe: ConditioningProbe | None = None,
) -> StageReport:
    """Stage (d): generation + editing (flow) and VQA (``ce_weight`` × CE) together, plus ``probe_weight`` ×
    the ``probe``'s loss on both kinds of conditioning; the vision tower frozen."""
    _set_trainable(model, ["mm_projector", "llm", "mcp", "dit"])
    for m in (model.llm, model.mcp, model.dit):
        m.train()
    lw = [model.mcp.fusion.layer_weights]
    core = [p for p in _params(model.mcp, model.dit) if p is not lw[0]]
    if probe is not None:
        probe.train()
        core += _params(probe)
    vlm = _params(model.mm_projector, model.llm)
    opt = torch.optim.AdamW(
        [
            {"params": core},
            {"params": lw, "lr": recipe.joint_lr * 10, "weight_decay": 0.0},
            {"params": vlm, "lr": recipe.joint_llm_lr},
        ],
        lr=recipe.joint_lr,
        weight_decay=0.01,
    )
    sched = _schedule(opt, recipe.joint_steps, recipe.warmup_frac)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    report = StageReport("joint", recipe.joint_steps, 0.0)
    parts: dict[str, list[float]] = {"gen": [], "edit": [], "vqa": []}
    t0 = time.perf_counter()
    n, m = len(cache.scenes), len(cache.sources)
    for step in range(recipe.joint_steps):
        gi = [rng.randrange(n) for _ in range(parallel.share(recipe.joint_gen))]
        ei = [rng.randrange(m) for _ in range(parallel.share(recipe.joint_edit))]
        vi = [rng.randrange(m) for _ in range(parallel.share(recipe.joint_vqa))]
        rows, aux = _flow_rows(model, tok, cache, gi, ei, rng, gen, recipe, True, probe)
        l_gen, l_edit = rows[: len(gi)].mean(), rows[len(gi) :].mean()
        l_vqa = image_vqa_loss(model, tok, cache, vi, rng, recipe)
        loss = l_gen + l_edit + recipe.ce_weight * l_vqa + aux
        _update(opt, sched, loss, core + lw + vlm)
        report.losses.append(float((l_gen + l_edit).detach()))
        for k, v in (("gen", l_gen), ("edit", l_edit), ("vqa", l_vqa)):
            parts[k].append(float(v.detach()))
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.joint_steps:
            w = recipe.log_every
            log(
                f"[d] joint step {step + 1}/{recipe.joint_steps} gen {np.mean(parts['gen'][-w:]):.4f} "
                f"edit {np.mean(parts['edit'][-w:]):.4f} vqa {np.mean(parts['vqa'][-w:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    for mod in (model.llm, model.mcp, model.dit):
        mod.eval()
    report.seconds = time.perf_counter() - t0
    k = max(1, len(parts["gen"]) // 10)
    report.extra = {f"{name}_first": round(float(np.mean(v[:k])), 5) for name, v in parts.items()}
    report.extra.update({f"{name}_last": round(float(np.mean(v[-k:])), 5) for name, v in parts.items()})
    return report
