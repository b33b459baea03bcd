"""Train the embedded shapes Mobile-O on a CPU, in the paper's stages (``mobile-o train-demo``).

The model is the ``shapes`` preset: the real module types (Qwen2, FastViT-MCi, MLP projector, MCP, SANA DiT,
DC-AE) at the real resolutions (1024 px in → 256 image tokens, 32×16×16 latents → 512 px out), narrow and
shallow. Stages (facts §8, scaled down to minutes):

(a) **autoencoder**: DC-AE on random 256 px crops of 512 px renders (fully convolutional, so the same
    weights encode and decode 512 px images with 16×16 latents); MSE + L1, small latent noise so the decoder
    tolerates imperfect latents. ``scaling_factor`` = 1 / std of the 512 px latents (as SANA's 0.41407).
(b) **VLM**: vision tower (training form: unfolded MobileOne/RepMixer branches, folded on save), projector
    and LLM on VQA: the inference template (``prompts.vqa_prompt``), images through the reference
    preprocessing (black pad, bicubic to 1024, [0, 1]) spliced as 256 tokens at the −200 placeholder,
    cross-entropy on the answer tokens and ``<|im_end|>``.
(c0) **caption binding**: MCP (LLM frozen by default), text only: at each position word of a caption a
    throw-away linear head reads the colour, shape and size of the object placed there
    (see :func:`bind_captions`).
(c) **DiT** with the VLM and the MCP frozen (the MCP trains again in (d)): rectified flow on captions,
    ``x_t = (1−σ)x0 + σε``, target ``ε − x0``,
    ``σ = t/1000`` with t uniform in 1..1000, unweighted MSE; the prompt is ``prompts.generation_prompt``,
    the MCP sees hidden_states[-4:] at each prompt's true length (it is not padding-invariant), the DiT a
    padded batch with ``encoder_attention_mask``. The unconditional branch (all-zero hidden states through
    the MCP, as CFG uses at inference) is trained with probability ``uncond_prob``.
(d) **joint post-training**: generation (caption → scene), editing (edit prompt with the source image's
    256 tokens → the edited scene's latents) and VQA (0.2 × CE) together; the LLM, projector, MCP and DiT
    train, the vision tower stays frozen (its features are cached; the paper trains it at a low LR).

Everything is seeded; :func:`train_demo` writes a checkpoint folder that
:func:`mobile_o_ros.reference.checkpoint.load_checkpoint` loads strictly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer

from mobile_o_ros import prompts
from mobile_o_ros.model_config import MobileOConfig, preset
from mobile_o_ros.reference.checkpoint import build_model, save_checkpoint
from mobile_o_ros.reference.model import MobileO, count_parameters
from mobile_o_ros.reference.vision import reparameterize
from mobile_o_ros.shapes import world
from mobile_o_ros.tokenizer_factory import build_tiny_tokenizer

Log = Callable[[str], None]

#: BPE vocabulary size of the shapes tokenizer (before the six special tokens).
TOKENIZER_VOCAB = 1000


@dataclass
class Recipe:
    """Sizes and steps of every stage (defaults: the full recipe, about 30 minutes on 2 CPU cores)."""

    # (a) autoencoder
    ae_steps: int = 400
    ae_batch: int = 8
    ae_crop: int = 128
    ae_lr: float = 1e-3
    ae_latent_noise: float = 0.0
    ae_latent_l2: float = 1e-3
    ae_clip: float = 5.0
    # (b1) vision tower pre-training (dense labels)
    vis_steps: int = 300
    vis_batch: int = 2
    vis_crop: int = 1024
    vis_lr: float = 2e-3
    vis_position_weight: float = 0.5
    # (b2) VQA (projector + LLM, cached vision features)
    vlm_steps: int = 450
    vlm_images: int = 8
    vlm_questions: int = 10
    vlm_rounds: int = 3  # question rounds per image (one prefix per image; questions are cheap)
    vlm_lr: float = 2e-3
    # cached sets for (c) and (d)
    gen_scenes: int = 1200
    src_scenes: int = 500
    # (c0) caption binding (LLM + MCP, text only)
    bind_steps: int = 120
    bind_batch: int = 32
    bind_lr: float = 3e-3
    bind_llm_lr: float = 0.0  # 0: LLM frozen (at 3e-3 its VQA loss went 0.58 -> 6.2, measured)
    # (c) DiT (+ MCP if dit_train_mcp)
    dit_steps: int = 600
    dit_batch: int = 32
    dit_lr: float = 2e-3
    uncond_prob: float = 0.1
    train_shift: float = 3.0
    high_noise: float = 0.5
    dit_train_llm: bool = False
    dit_train_mcp: bool = False  # False keeps the binding that (c0) taught the MCP; (d) trains it again
    layout_weight: float = 0.5  # dense layout CE on a DiT block (LayoutProbe), stages (c) and (d)
    layout_block: int = 2
    # (d) joint
    joint_steps: int = 130
    joint_gen: int = 12
    joint_edit: int = 12
    joint_vqa: int = 4
    joint_lr: float = 1e-3
    joint_llm_lr: float = 3e-4
    ce_weight: float = 0.2
    # misc
    warmup_frac: float = 0.05
    log_every: int = 50

    @classmethod
    def quick(cls) -> Recipe:
        """A few steps of every stage on tiny sets (for tests)."""
        return cls(
            ae_steps=12,
            ae_batch=4,
            ae_crop=128,
            vis_steps=9,
            vis_batch=2,
            vis_crop=256,
            vlm_steps=9,
            vlm_images=2,
            gen_scenes=24,
            src_scenes=8,
            bind_steps=12,
            bind_batch=8,
            dit_steps=12,
            dit_batch=8,
            joint_steps=15,
            joint_gen=6,
            joint_edit=6,
            joint_vqa=2,
            joint_lr=2e-3,
            log_every=4,
        )


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


def _seed_stream(rng: random.Random) -> Iterator[int]:
    while True:
        yield world.TRAIN_SEED_BASE + rng.randrange(10**9 - 1)


def vae_input(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] → [3, H, W] in [−1, 1] (SANA's VAE normalisation)."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1.0


def vision_input(rgb: np.ndarray, size: int = 1024) -> torch.Tensor:
    """uint8 square [H, W, 3] → [3, size, size] in [0, 1]: bicubic (PIL) as the reference preprocessing."""
    img = Image.fromarray(rgb)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


class PromptTokens:
    """The checkpoint's tokenizer (fast ``tokenizers`` copy of it) with LLaVA's −200 image splice."""

    def __init__(self, tokenizer_json: Path) -> None:
        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.eos = int(self.tok.token_to_id(prompts.IM_END))

    def encode(self, text: str) -> list[int]:
        """Plain text → ids (special tokens recognised, none added)."""
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def image_prompt(self, prompt: str) -> list[int]:
        """Split on ``<image>`` and join the chunks with −200 (at most one placeholder)."""
        chunks = prompt.split(prompts.IMAGE_PLACEHOLDER)
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(prompts.IMAGE_TOKEN_INDEX)
            ids.extend(self.encode(chunk))
        return ids


def splice(model: MobileO, ids: list[int], image_embeds: torch.Tensor | None) -> torch.Tensor:
    """Token ids with at most one −200 → inputs_embeds [L, D], the image tokens spliced at the placeholder."""
    text = torch.tensor([i for i in ids if i != prompts.IMAGE_TOKEN_INDEX], dtype=torch.long)
    emb = model.embed_tokens(text[None])[0]
    if image_embeds is None:
        return emb
    cut = ids.index(prompts.IMAGE_TOKEN_INDEX)
    return torch.cat([emb[:cut], image_embeds.to(emb.dtype), emb[cut:]], dim=0)


def pad_batch(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [L_i, D] sequences → ([B, L, D], mask [B, L] with 1 for real tokens)."""
    n = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros((len(seqs), n, seqs[0].shape[1]))
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def mcp_inputs_batch(model: MobileO, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded LLM prefill → hidden_states[-4:] stacked [B, 4, L, D] (positions past a row's length: junk)."""
    out = model.llm.model(
        inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False
    )
    return torch.stack(out.hidden_states[-model.mcp.num_layers :], dim=1)


def conditioning_batch(
    model: MobileO, stacked: torch.Tensor, lengths: Sequence[int], uncond: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """MCP per row at its true length (zeros for unconditional rows) → padded [B, L, C] and the DiT mask."""
    outs = []
    for i, n in enumerate(lengths):
        h = stacked[i : i + 1, :, :n]
        outs.append(model.mcp(torch.zeros_like(h) if uncond[i] else h)[0])
    cond, mask = pad_batch(outs)
    return cond, mask


def flow_loss(
    model: MobileO,
    x0: torch.Tensor,
    cond: torch.Tensor,
    mask: torch.Tensor,
    gen: torch.Generator,
    shift: float = 1.0,
    high_noise: float = 0.0,
) -> torch.Tensor:
    """Rectified-flow MSE: x_t = (1−σ)x0 + σε, target ε − x0, timestep t = 1000σ (facts §8).

    ``shift`` 1: σ = t/1000 with t uniform in 1..1000 (the reference). ``shift`` s > 1:
    σ = s·u / (1 + (s−1)·u) with u uniform, the inference schedule's shift. A fraction ``high_noise`` of
    the rows instead draws σ uniform in [0.9, 1], where the caption is almost the only information: with
    few CPU steps the model otherwise learns to read the noisy latent long before it learns to lay a scene
    out from text.
    """
    b = x0.shape[0]
    if shift == 1.0:
        t = torch.randint(1, 1001, (b,), generator=gen).float()
    else:
        u = torch.rand((b,), generator=gen).clamp_min(1e-3)
        t = 1000.0 * shift * u / (1 + (shift - 1) * u)
    if high_noise > 0:
        hi = torch.rand((b,), generator=gen) < high_noise
        t = torch.where(hi, 900.0 + 100.0 * torch.rand((b,), generator=gen), t)
    sigma = (t / 1000.0).view(b, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=gen)
    xt = (1 - sigma) * x0 + sigma * eps
    v = model.dit(
        hidden_states=xt,
        encoder_hidden_states=cond,
        timestep=t,
        encoder_attention_mask=mask,
        return_dict=False,
    )[0]
    return F.mse_loss(v, eps - x0)


# ------------------------------------------------------------------------------------------- stages
def train_autoencoder(model: MobileO, recipe: Recipe, rng: random.Random, log: Log) -> StageReport:
    """Stage (a): DC-AE reconstruction on random crops of 512 px renders; sets ``scaling_factor``."""
    vae = model.vae
    _set_trainable(model, ["vae"])
    vae.train()
    opt = torch.optim.AdamW(_params(vae), lr=recipe.ae_lr, weight_decay=0.0)
    sched = _schedule(opt, recipe.ae_steps, recipe.warmup_frac)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    seeds = _seed_stream(rng)
    report = StageReport("autoencoder", recipe.ae_steps, 0.0)
    t0 = time.perf_counter()
    c = recipe.ae_crop
    for step in range(recipe.ae_steps):
        batch = []
        for _ in range(recipe.ae_batch):
            img = world.render(world.make_scene(next(seeds)), 512)
            y, x = rng.randrange(0, 512 - c + 1, 32), rng.randrange(0, 512 - c + 1, 32)
            batch.append(vae_input(img[y : y + c, x : x + c]))
        x = torch.stack(batch)
        z = vae.encode(x).latent
        penalty = recipe.ae_latent_l2 * z.pow(2).mean()
        if recipe.ae_latent_noise:
            z = z + recipe.ae_latent_noise * torch.randn(z.shape, generator=gen)
        r = vae.decode(z).sample
        loss = F.mse_loss(r, x) + 0.5 * F.l1_loss(r, x)
        opt.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        torch.nn.utils.clip_grad_norm_(_params(vae), recipe.ae_clip)
        opt.step()
        sched.step()
        report.losses.append(loss.item())
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.ae_steps:
            log(
                f"[a] autoencoder step {step + 1}/{recipe.ae_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    vae.eval()
    with torch.no_grad():
        x = torch.stack([vae_input(world.render(world.make_scene(next(seeds)), 512)) for _ in range(16)])
        std = float(vae.encode(x).latent.std())
    model.config.vae["scaling_factor"] = round(1.0 / std, 5)
    report.seconds = time.perf_counter() - t0
    report.extra["scaling_factor"] = model.config.vae["scaling_factor"]
    log(f"[a] scaling_factor = {model.config.vae['scaling_factor']} ({report.seconds:.0f} s)")
    return report


def _qa_sequences(
    model: MobileO, tok: PromptTokens, image_embeds: torch.Tensor, qas: Sequence[world.Question]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    seqs, labels = [], []
    for q in qas:
        ids = tok.image_prompt(prompts.vqa_prompt(q.question))
        answer = [*tok.encode(q.answer), tok.eos]
        e = splice(model, ids, image_embeds)
        a = model.embed_tokens(torch.tensor(answer)[None])[0]
        seqs.append(torch.cat([e, a], dim=0))
        labels.append(torch.cat([torch.full((e.shape[0],), -100), torch.tensor(answer)]))
    return seqs, labels


def vqa_loss(model: MobileO, seqs: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """Mean next-token CE over the answer tokens of a padded batch."""
    embeds, mask = pad_batch(seqs)
    lab = torch.full(mask.shape, -100, dtype=torch.long)
    for i, la in enumerate(labels):
        lab[i, : la.shape[0]] = la
    return model.llm(inputs_embeds=embeds, attention_mask=mask, labels=lab, use_cache=False).loss


def vqa_loss_shared(
    model: MobileO,
    tok: PromptTokens,
    image_embeds: torch.Tensor,
    questions: Sequence[Sequence[world.Question]],
) -> torch.Tensor:
    """The same loss as :func:`vqa_loss` over every (image, question) pair, computing each image's prompt
    prefix (system turn, user header, 256 image tokens) once: a causal LLM's prefix states do not depend
    on what follows, so each question continues from its image's KV cache (gradients flow through it)."""
    ids = tok.image_prompt(prompts.vqa_prompt("?"))
    cut = ids.index(prompts.IMAGE_TOKEN_INDEX)
    head = model.embed_tokens(torch.tensor(ids[:cut])[None])[0]
    n = image_embeds.shape[0]
    prefix = torch.cat([head.expand(n, -1, -1), image_embeds.to(head.dtype)], dim=1)
    cache = model.llm.model(inputs_embeds=prefix, use_cache=True).past_key_values
    rows, seqs, labels = [], [], []
    for i, qs in enumerate(questions):
        for q in qs:
            q_ids = tok.image_prompt(prompts.vqa_prompt(q.question))
            tail = q_ids[q_ids.index(prompts.IMAGE_TOKEN_INDEX) + 1 :]
            answer = [*tok.encode(q.answer), tok.eos]
            rows.append(i)
            seqs.append(model.embed_tokens(torch.tensor(tail + answer)[None])[0])
            labels.append(torch.tensor([-100] * len(tail) + answer))
    cache.batch_select_indices(torch.tensor(rows))
    embeds, mask = pad_batch(seqs)
    lab = torch.full(mask.shape, -100, dtype=torch.long)
    for i, la in enumerate(labels):
        lab[i, : la.shape[0]] = la
    full_mask = torch.cat([torch.ones((len(rows), prefix.shape[1]), dtype=torch.long), mask], dim=1)
    return model.llm(
        inputs_embeds=embeds, attention_mask=full_mask, past_key_values=cache, labels=lab, use_cache=True
    ).loss


#: Classes of the dense vision pre-training labels: background + colours, background + shapes.
_COLOUR_CLASSES = ("background", *world.COLOURS)
_SHAPE_CLASSES = ("background", *world.SHAPES)


def token_labels(
    scene: world.Scene, grid: int = 16, min_fraction: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Per image token (row-major ``grid × grid`` cells): colour and shape class of the object covering most
    of the cell (at least ``min_fraction`` of it), else background (class 0)."""
    cell = 32
    lab = world.render_labels(scene, grid * cell).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
    lab = lab.reshape(grid * grid, cell * cell)
    counts = np.stack([(lab == k + 1).sum(1) for k in range(len(scene.objects))], axis=1)
    best = counts.argmax(1)
    present = counts.max(1) >= min_fraction * cell * cell
    colours = np.array([_COLOUR_CLASSES.index(o.colour) for o in scene.objects])[best] * present
    shapes = np.array([_SHAPE_CLASSES.index(o.shape) for o in scene.objects])[best] * present
    return colours.astype(np.int64), shapes.astype(np.int64)


def _balanced_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the object tokens (label > 0) plus mean CE over the background tokens.

    Measured: with a plain mean the ~90% background tokens dominate; a linear probe on the features then
    read the colour of 67% and the shape of 54% of the object tokens (71% and 67% with this loss)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    obj = labels > 0
    loss = ce[~obj].mean() if bool((~obj).any()) else ce.sum() * 0
    return loss + ce[obj].mean() if bool(obj.any()) else loss


def pretrain_vision(model: MobileO, recipe: Recipe, rng: random.Random, log: Log) -> StageReport:
    """Stage (b1): the vision tower on dense per-token labels through a temporary linear head (stands in for
    MobileCLIP pre-training): the colour and shape of the object under each token and, on whole images, the
    token's own row and column in the 16×16 grid.

    The position labels matter for editing: the DiT rebuilds the source image from the image tokens'
    hidden states through cross-attention, which carries no positions of its own, so a latent cell can
    only find "its" image token if the features say where they are. ``vis_crop`` < 1024 trains on 64-px
    aligned random crops instead (a quarter of the cost per image, no position labels)."""
    _set_trainable(model, ["vision"])
    tower = model.vision
    tower.train()
    nc, ns, grid = len(_COLOUR_CLASSES), len(_SHAPE_CLASSES), 16
    head = torch.nn.Linear(model.config.mm_hidden_size, nc + ns + 2 * grid)
    params = _params(tower, head)
    opt = torch.optim.AdamW(params, lr=recipe.vis_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.vis_steps, recipe.warmup_frac)
    seeds = _seed_stream(rng)
    report = StageReport("vision", recipe.vis_steps, 0.0)
    t0 = time.perf_counter()
    c = recipe.vis_crop // 64  # crop side in tokens
    whole = c == grid
    rows = torch.arange(grid).repeat_interleave(grid)
    cols_of = torch.arange(grid).repeat(grid)
    for step in range(recipe.vis_steps):
        xs, cols, shps = [], [], []
        for _ in range(recipe.vis_batch):
            scene = world.make_scene(next(seeds))
            img = vision_input(world.render(scene, 512))
            col, shp = token_labels(scene)
            ty, tx = rng.randrange(0, grid - c + 1), rng.randrange(0, grid - c + 1)
            xs.append(img[:, ty * 64 : (ty + c) * 64, tx * 64 : (tx + c) * 64])
            cols.append(torch.from_numpy(col.reshape(grid, grid)[ty : ty + c, tx : tx + c].reshape(-1)))
            shps.append(torch.from_numpy(shp.reshape(grid, grid)[ty : ty + c, tx : tx + c].reshape(-1)))
        logits = head(tower(torch.stack(xs)))
        loss = _balanced_ce(logits[..., :nc].flatten(0, 1), torch.cat(cols)) + _balanced_ce(
            logits[..., nc : nc + ns].flatten(0, 1), torch.cat(shps)
        )
        if whole:
            b = len(xs)
            pos = logits[..., nc + ns :]
            loss = loss + recipe.vis_position_weight * (
                F.cross_entropy(pos[..., :grid].flatten(0, 1), rows.repeat(b))
                + F.cross_entropy(pos[..., grid:].flatten(0, 1), cols_of.repeat(b))
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        report.losses.append(loss.item())
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.vis_steps:
            log(
                f"[b1] vision step {step + 1}/{recipe.vis_steps} loss "
                f"{_recent(report.losses, recipe.log_every):.4f} "
                f" ({time.perf_counter() - t0:.0f} s)"
            )
    tower.eval()
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class Cache:
    """Fixed training sets: target scenes with latents, and edits into some of them whose source images'
    vision features are cached (the tower is frozen after stage b1). The sources also serve VQA."""

    scenes: list[world.Scene]
    latents: torch.Tensor  # [N, 32, 16, 16], already × scaling_factor
    sources: list[world.Edit]
    source_feats: torch.Tensor  # [M, 256, mm_hidden] (vision tower output, before the projector)
    source_latent_index: list[int]
    seconds: float = 0.0


@torch.no_grad()
def build_cache(model: MobileO, recipe: Recipe, rng: random.Random, log: Log) -> Cache:
    """Encode ``gen_scenes`` renders to latents; draw ``src_scenes`` edits into some of them and cache the
    sources' vision features."""
    t0 = time.perf_counter()
    model.vae.eval()
    model.vision.eval()
    seeds = _seed_stream(rng)
    scenes = [world.make_scene(next(seeds)) for _ in range(recipe.gen_scenes)]
    sf = float(model.config.vae["scaling_factor"])
    lat = []
    for i in range(0, len(scenes), 16):
        x = torch.stack([vae_input(world.render(s, 512)) for s in scenes[i : i + 16]])
        lat.append(model.vae.encode(x).latent * sf)
    latents = torch.cat(lat)
    log(f"[cache] {len(scenes)} scene latents ({time.perf_counter() - t0:.0f} s)")
    index = [i % len(scenes) for i in range(recipe.src_scenes)]
    edits = [world.edit_into(scenes[i], rng) for i in index]
    tower = reparameterize(copy.deepcopy(model.vision)).eval()  # the inference form, as shipped (and faster)
    feats = []
    for i in range(0, len(edits), 8):
        px = torch.stack([vision_input(world.render(e.source, 512)) for e in edits[i : i + 8]])
        feats.append(tower(px))
    cache = Cache(scenes, latents, edits, torch.cat(feats), index)
    cache.seconds = time.perf_counter() - t0
    log(f"[cache] {len(edits)} edit sources' vision features ({cache.seconds:.0f} s)")
    return cache


def train_vqa(
    model: MobileO, tok: PromptTokens, cache: Cache, recipe: Recipe, rng: random.Random, log: Log
) -> StageReport:
    """Stage (b2): projector + LLM on VQA over the cached source images (tower frozen)."""
    _set_trainable(model, ["mm_projector", "llm"])
    model.llm.train()
    params = _params(model.mm_projector, model.llm)
    opt = torch.optim.AdamW(params, lr=recipe.vlm_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.vlm_steps, recipe.warmup_frac)
    report = StageReport("vqa", recipe.vlm_steps, 0.0)
    t0 = time.perf_counter()
    m = len(cache.sources)
    for step in range(recipe.vlm_steps):
        idx = [rng.randrange(m) for _ in range(recipe.vlm_images)]
        img = model.mm_projector(cache.source_feats[idx])
        qsets = []
        for i in idx:
            qs = world.all_questions(cache.sources[i].source, rng, per_category=recipe.vlm_rounds)
            qsets.append(rng.sample(qs, min(recipe.vlm_questions, len(qs))))
        loss = vqa_loss_shared(model, tok, img, qsets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        report.losses.append(loss.item())
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.vlm_steps:
            log(
                f"[b2] vqa step {step + 1}/{recipe.vlm_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    model.llm.eval()
    report.seconds = time.perf_counter() - t0
    return report


def _gen_batch(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    idx: Sequence[int],
    rng: random.Random,
    uncond_prob: float,
    train_llm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [
        splice(model, tok.encode(prompts.generation_prompt(world.caption(cache.scenes[i], rng))), None)
        for i in idx
    ]
    cond, mask, keep = _cond_from_seqs(model, seqs, uncond_prob, rng, train_llm)
    return cond, mask, cache.latents[list(idx)], keep


def _edit_batch(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    idx: Sequence[int],
    rng: random.Random,
    uncond_prob: float,
    train_llm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    img = model.mm_projector(cache.source_feats[list(idx)])
    seqs = [
        splice(model, tok.image_prompt(prompts.edit_prompt(cache.sources[i].instruction)), img[k])
        for k, i in enumerate(idx)
    ]
    x0 = cache.latents[[cache.source_latent_index[i] for i in idx]]
    cond, mask, keep = _cond_from_seqs(model, seqs, uncond_prob, rng, train_llm)
    return cond, mask, x0, keep


def _cond_from_seqs(
    model: MobileO, seqs: list[torch.Tensor], uncond_prob: float, rng: random.Random, train_llm: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditioning [B, L, C], its mask, and which rows are conditional (the rest are CFG's null rows)."""
    embeds, mask = pad_batch(seqs)
    if train_llm:
        stacked = mcp_inputs_batch(model, embeds, mask)
    else:
        with torch.no_grad():
            stacked = mcp_inputs_batch(model, embeds, mask)
    lengths = [int(s.shape[0]) for s in seqs]
    uncond = [rng.random() < uncond_prob for _ in seqs]
    cond, mask = conditioning_batch(model, stacked, lengths, uncond)
    return cond, mask, torch.tensor([not u for u in uncond])


#: Colour classes of the DiT layout labels: each object colour, then each background colour.
_LAYOUT_COLOURS = (*world.COLOURS, *(f"bg:{b}" for b in world.BACKGROUNDS))


def layout_labels(scene: world.Scene, grid: int) -> torch.Tensor:
    """Per DiT token (row-major ``grid × grid``): [colour class (object colour, else the background's),
    shape class (0 = background)] → int64 [2, grid²]."""
    colours, shapes = token_labels(scene, grid=grid)
    bg = len(world.COLOURS) + list(world.BACKGROUNDS).index(scene.background)
    return torch.from_numpy(np.stack([np.where(colours == 0, bg, colours - 1), shapes]))


class LayoutProbe:
    """Dense supervision of a DiT block's output (in the spirit of REPA's representation alignment): a
    throw-away linear head must read, at every token, the colour and shape of what the target image shows
    there. It trains with the flow loss in stages (c) and (d) and is discarded with its forward hook.

    Measured: with the flow loss alone a DiT trained for minutes on a CPU learned backgrounds and blobs
    but not which object goes where; the cross-entropy here hands the cross-attention a direct signal for
    routing each region to the caption (or source-image) tokens that describe it."""

    def __init__(self, model: MobileO, block: int) -> None:
        dit = model.config.dit
        self.grid = model.config.latent_shape[-1] // dit.get("patch_size", 1)
        width = dit["num_attention_heads"] * dit["attention_head_dim"]
        self.head = torch.nn.Linear(width, len(_LAYOUT_COLOURS) + len(_SHAPE_CLASSES))
        self._features: torch.Tensor | None = None
        self._hook = model.dit.transformer_blocks[block].register_forward_hook(self._keep)
        self._labels: dict[world.Scene, torch.Tensor] = {}

    def _keep(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        self._features = output

    def parameters(self) -> list[torch.nn.Parameter]:
        """The head's parameters (for the optimizer)."""
        return list(self.head.parameters())

    def loss(self, scenes: Sequence[world.Scene], keep: torch.Tensor) -> torch.Tensor:
        """CE of the last DiT call's block output against ``scenes`` (conditional rows ``keep`` only)."""
        if self._features is None or not bool(keep.any()):
            return torch.zeros(())
        rows = [sc for sc, k in zip(scenes, keep.tolist(), strict=True) if k]
        for sc in rows:
            if sc not in self._labels:
                self._labels[sc] = layout_labels(sc, self.grid)
        labels = torch.stack([self._labels[sc] for sc in rows])  # [B, 2, N]
        logits = self.head(self._features[keep])
        n = len(_LAYOUT_COLOURS)
        return F.cross_entropy(logits[..., :n].flatten(0, 1), labels[:, 0].flatten()) + F.cross_entropy(
            logits[..., n:].flatten(0, 1), labels[:, 1].flatten()
        )

    def remove(self) -> None:
        """Detach the forward hook."""
        self._hook.remove()


#: Size classes of the caption-binding head.
_SIZE_CLASSES = world.SIZES


def binding_targets(
    tok: PromptTokens, ids: Sequence[int], scene: world.Scene
) -> list[tuple[int, int, int, int]]:
    """(token index, colour, shape, size class) for every position word of a caption prompt: the object that
    the caption places there. Every position name is one token of the shapes tokenizer."""
    words = {tok.tok.token_to_id("Ġ" + p): p for p in world.POSITIONS}
    out = []
    for j, t in enumerate(ids):
        o = scene.at(words[t]) if t in words else None
        if o is not None:
            out.append(
                (
                    j,
                    _COLOUR_CLASSES.index(o.colour),
                    _SHAPE_CLASSES.index(o.shape),
                    list(_SIZE_CLASSES).index(o.size),
                )
            )
    return out


def bind_captions(
    model: MobileO, tok: PromptTokens, recipe: Recipe, rng: random.Random, log: Log
) -> StageReport:
    """Stage (c0): the MCP (and the LLM when ``recipe.bind_llm_lr`` > 0) on binding a caption's words, text
    only. At each position word ("top", "left", ...) a throw-away linear head must read, from the MCP's
    output token, the colour, shape and size of the object the caption puts there.

    Generation needs that binding: a DiT latent cell finds the caption token for its region by
    cross-attention and must get the attributes from that same token. Measured on this model: a DiT trained
    for minutes never discovers the binding by itself (colours at chance), and an attention probe over the
    whole caption is slow to teach it (loss 4.6 → 3.2 in 300 steps). This per-token head learns faster (a
    causal LLM's position word sees its own clause) when the LLM has already seen captions: 89% binding
    accuracy after 120 steps with a fresh MCP on the LLM of a finished run (35% when the head must also
    say which position the word names, so that target is left out). In the recipe, where the LLM has
    only been trained on VQA before this stage, it reaches 9% in 120 steps with the LLM training and 3%
    with it frozen (``accuracy_last`` in the training report): the binding is not learned yet, which
    limits generation."""
    train_llm = recipe.bind_llm_lr > 0
    _set_trainable(model, ["llm", "mcp"] if train_llm else ["mcp"])
    if train_llm:
        model.llm.train()
    model.mcp.train()
    nc, ns = len(_COLOUR_CLASSES), len(_SHAPE_CLASSES)
    head = torch.nn.Linear(model.mcp.fusion.output_proj[0].out_features, nc + ns + len(_SIZE_CLASSES))
    lw = [model.mcp.fusion.layer_weights]
    rest = [p for p in _params(model.mcp, head) if p is not lw[0]]
    groups = [
        {"params": rest},
        {"params": lw, "lr": recipe.bind_lr * 10, "weight_decay": 0.0},
        *([{"params": _params(model.llm), "lr": recipe.bind_llm_lr}] if train_llm else []),
    ]
    opt = torch.optim.AdamW(groups, lr=recipe.bind_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.bind_steps, recipe.warmup_frac)
    seeds = _seed_stream(rng)
    report = StageReport("caption_binding", recipe.bind_steps, 0.0)
    accuracy: list[float] = []
    t0 = time.perf_counter()
    for step in range(recipe.bind_steps):
        seqs, rows = [], []
        for k in range(recipe.bind_batch):
            scene = world.make_scene(next(seeds))
            ids = tok.encode(prompts.generation_prompt(world.caption(scene, rng)))
            seqs.append(splice(model, ids, None))
            rows += [(k, *t) for t in binding_targets(tok, ids, scene)]
        cond, _, _ = _cond_from_seqs(model, seqs, 0.0, rng, train_llm=train_llm)
        target = torch.tensor(rows)
        logits = head(cond[target[:, 0], target[:, 1]])
        parts = (logits[:, :nc], logits[:, nc : nc + ns], logits[:, nc + ns :])
        loss = sum(F.cross_entropy(lo, target[:, 2 + i]) for i, lo in enumerate(parts))
        right = torch.stack([lo.argmax(1) == target[:, 2 + i] for i, lo in enumerate(parts)]).all(0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        report.losses.append(loss.item())
        accuracy.append(float(right.float().mean()))
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.bind_steps:
            log(
                f"[c0] caption binding step {step + 1}/{recipe.bind_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} "
                f"accuracy {_recent(accuracy, recipe.log_every):.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    model.llm.eval()
    model.mcp.eval()
    report.seconds = time.perf_counter() - t0
    report.extra["accuracy_last"] = round(_recent(accuracy, max(1, recipe.bind_steps // 10)), 4)
    return report


def train_dit(
    model: MobileO, tok: PromptTokens, cache: Cache, recipe: Recipe, rng: random.Random, log: Log
) -> StageReport:
    """Stage (c): the DiT by rectified flow on captions, the VLM frozen; the MCP too unless
    ``recipe.dit_train_mcp``, so that the flow loss does not overwrite what stage (c0) taught it (stage (d)
    trains the MCP again). Not measured against training it here."""
    names = ["dit"] + (["mcp"] if recipe.dit_train_mcp else []) + (["llm"] if recipe.dit_train_llm else [])
    _set_trainable(model, names)
    model.dit.train()
    layout = LayoutProbe(model, recipe.layout_block)
    groups: list[dict[str, Any]] = [{"params": _params(model.dit) + layout.parameters()}]
    if recipe.dit_train_mcp:
        model.mcp.train()
        lw = [model.mcp.fusion.layer_weights]
        groups[0]["params"] += [p for p in _params(model.mcp) if p is not lw[0]]
        groups.append({"params": lw, "lr": recipe.dit_lr * 10, "weight_decay": 0.0})
    if recipe.dit_train_llm:
        model.llm.train()
        groups.append({"params": _params(model.llm), "lr": recipe.joint_llm_lr})
    opt = torch.optim.AdamW(groups, lr=recipe.dit_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.dit_steps, recipe.warmup_frac)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    report = StageReport("dit", recipe.dit_steps, 0.0)
    aux_losses: list[float] = []
    t0 = time.perf_counter()
    n = len(cache.scenes)
    for step in range(recipe.dit_steps):
        idx = [rng.randrange(n) for _ in range(recipe.dit_batch)]
        cond, mask, x0, keep = _gen_batch(
            model, tok, cache, idx, rng, recipe.uncond_prob, train_llm=recipe.dit_train_llm
        )
        loss = flow_loss(model, x0, cond, mask, gen, recipe.train_shift, recipe.high_noise)
        aux = layout.loss([cache.scenes[i] for i in idx], keep)
        loss = loss + recipe.layout_weight * aux
        aux_losses.append(aux.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        report.losses.append(loss.item())
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.dit_steps:
            log(
                f"[c] dit step {step + 1}/{recipe.dit_steps} "
                f"loss {_recent(report.losses, recipe.log_every):.4f} "
                f"(layout {_recent(aux_losses, recipe.log_every):.4f}) ({time.perf_counter() - t0:.0f} s)"
            )
    layout.remove()
    k = max(1, recipe.dit_steps // 10)
    report.extra = {"layout_first": round(float(np.mean(aux_losses[:k])), 5)}
    report.extra["layout_last"] = round(_recent(aux_losses, k), 5)
    model.dit.eval()
    model.mcp.eval()
    model.llm.eval()
    report.seconds = time.perf_counter() - t0
    return report


def train_joint(
    model: MobileO, tok: PromptTokens, cache: Cache, recipe: Recipe, rng: random.Random, log: Log
) -> StageReport:
    """Stage (d): generation + editing (flow) and VQA (0.2 × CE) together; the vision tower frozen."""
    _set_trainable(model, ["mm_projector", "llm", "mcp", "dit"])
    for m in (model.llm, model.mcp, model.dit):
        m.train()
    lw = [model.mcp.fusion.layer_weights]
    layout = LayoutProbe(model, recipe.layout_block)
    core = [p for p in _params(model.mcp, model.dit) if p is not lw[0]] + layout.parameters()
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
    parts: dict[str, list[float]] = {"gen": [], "edit": [], "vqa": [], "layout": []}
    t0 = time.perf_counter()
    n, m = len(cache.scenes), len(cache.sources)
    for step in range(recipe.joint_steps):
        gi = [rng.randrange(n) for _ in range(recipe.joint_gen)]
        ei = [rng.randrange(m) for _ in range(recipe.joint_edit)]
        vi = [rng.randrange(m) for _ in range(recipe.joint_vqa)]
        c1, m1, x1, k1 = _gen_batch(model, tok, cache, gi, rng, recipe.uncond_prob, train_llm=True)
        c2, m2, x2, k2 = _edit_batch(model, tok, cache, ei, rng, recipe.uncond_prob, train_llm=True)
        l_gen = flow_loss(model, x1, c1, m1, gen, recipe.train_shift, recipe.high_noise)
        a_gen = layout.loss([cache.scenes[i] for i in gi], k1)
        l_edit = flow_loss(model, x2, c2, m2, gen, recipe.train_shift, recipe.high_noise)
        a_edit = layout.loss([cache.scenes[cache.source_latent_index[i]] for i in ei], k2)
        img = model.mm_projector(cache.source_feats[vi])
        l_vqa = vqa_loss_shared(model, tok, img, [world.questions(cache.sources[i].source, rng) for i in vi])
        loss = l_gen + l_edit + recipe.ce_weight * l_vqa + recipe.layout_weight * (a_gen + a_edit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(core + lw + vlm, 1.0)
        opt.step()
        sched.step()
        report.losses.append(float((l_gen + l_edit).detach()))
        for k, v in (("gen", l_gen), ("edit", l_edit), ("vqa", l_vqa), ("layout", a_gen + a_edit)):
            parts[k].append(float(v.detach()))
        if (step + 1) % recipe.log_every == 0 or step + 1 == recipe.joint_steps:
            w = recipe.log_every
            log(
                f"[d] joint step {step + 1}/{recipe.joint_steps} gen {np.mean(parts['gen'][-w:]):.4f} "
                f"edit {np.mean(parts['edit'][-w:]):.4f} vqa {np.mean(parts['vqa'][-w:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    layout.remove()
    for mod in (model.llm, model.mcp, model.dit):
        mod.eval()
    report.seconds = time.perf_counter() - t0
    k = max(1, len(parts["gen"]) // 10)
    report.extra = {f"{name}_first": round(float(np.mean(v[:k])), 5) for name, v in parts.items()}
    report.extra.update({f"{name}_last": round(float(np.mean(v[-k:])), 5) for name, v in parts.items()})
    return report


# ------------------------------------------------------------------------------------------- driver
def shapes_model(out_dir: Path, seed: int) -> tuple[MobileO, PromptTokens]:
    """Write the tokenizer into ``out_dir``; build the untrained ``shapes`` model (vision: training form)."""
    vocab = build_tiny_tokenizer(
        out_dir, vocab_size=TOKENIZER_VOCAB, seed=seed, extra_corpus=world.language_corpus(seed=seed)
    )
    cfg: MobileOConfig = preset("shapes", vocab_size=vocab)
    tok = PromptTokens(out_dir / "tokenizer.json")
    cfg.llm["bos_token_id"] = tok.tok.token_to_id(prompts.ENDOFTEXT)
    cfg.llm["eos_token_id"] = tok.eos
    torch.manual_seed(seed)
    model = build_model(cfg, vision_inference_mode=False)
    return model, tok


def save_shapes_checkpoint(model: MobileO, out_dir: Path) -> Path:
    """Fold the vision tower (inference form, as released) and write config.json + model.safetensors."""
    reparameterize(model.vision)
    model.eval()
    save_checkpoint(model, out_dir)
    gen_cfg = {"eos_token_id": model.config.llm["eos_token_id"], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out_dir


def train_demo(
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    recipe: Recipe | None = None,
    log: Log = print,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the shapes model from ``seed`` and write a checkpoint folder; returns the training report.

    ``quick`` runs :meth:`Recipe.quick` (a few steps per stage). The report (also written as
    ``training_report.json``) holds per-stage steps, seconds and first/last losses.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    recipe = recipe or (Recipe.quick() if quick else Recipe())
    t_start = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    rng = random.Random(seed)
    model, tok = shapes_model(out, seed)
    log(
        f"shapes model: {count_parameters(model):,} parameters "
        + ", ".join(
            f"{c} {count_parameters(model.component(c)):,}"
            for c in ("vision", "mm_projector", "llm", "mcp", "dit", "vae")
        )
    )
    stages = [train_autoencoder(model, recipe, rng, log), pretrain_vision(model, recipe, rng, log)]
    cache = build_cache(model, recipe, rng, log)
    stages.append(train_vqa(model, tok, cache, recipe, rng, log))
    stages.append(bind_captions(model, tok, recipe, rng, log))
    stages.append(train_dit(model, tok, cache, recipe, rng, log))
    stages.append(train_joint(model, tok, cache, recipe, rng, log))
    save_shapes_checkpoint(model, out)
    total = time.perf_counter() - t_start
    report = {
        "seed": seed,
        "quick": quick,
        "recipe": dataclasses.asdict(recipe),
        "parameters": {
            c: count_parameters(model.component(c))
            for c in ("vision", "mm_projector", "llm", "mcp", "dit", "vae")
        },
        "stages": {s.name: s.summary() for s in stages},
        "cache_seconds": round(cache.seconds, 1),
        "total_seconds": round(total, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} in {total:.0f} s")
    return report
