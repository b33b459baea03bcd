"""Train the embedded shapes Mobile-O on a CPU, in the paper's stages (``mobile-o train-demo``).

The model is the ``shapes`` preset: the real module types (Qwen2, FastViT-MCi, MLP projector, MCP, SANA DiT,
DC-AE), narrow and shallow, at reduced resolutions (256 px in → 64 image tokens; 32×16×16 latents → 128 px
out). Stages (facts §8, scaled down to minutes):

(a) **autoencoder**: DC-AE reconstruction of whole 128 px renders, object pixels weighted up;
    ``scaling_factor`` = 1 / std of the latents (as SANA's 0.41407).
(b1) **vision tower** (training form: unfolded MobileOne/RepMixer branches, folded on save) on dense
    per-token labels through a throw-away head (stands in for MobileCLIP pre-training).
(b2) **VLM**: projector and LLM on questions about images (the inference template ``prompts.vqa_prompt``,
    images through the reference preprocessing, spliced at the −200 placeholder) and, text only, on the
    same questions about captions inside the generation prompt; a short-format warm-up first.
(c0) **conditioning**: LLM, projector and MCP on a training-only read-out of the MCP output
    (:class:`ConditioningProbe`: per named position, what the target scene shows there), for captions and
    for edit prompts with their source images, with the VQA loss beside it; no DiT yet.
(c) **DiT + MCP** with the VLM frozen: rectified flow on captions (and ``dit_edits`` edit prompts per
    step), ``x_t = (1−σ)x0 + σε``, target
    ``ε − x0``, σ drawn with the inference schedule's shift; the prompt is ``prompts.generation_prompt``,
    the MCP sees hidden_states[-4:] at each prompt's true length (it is not padding-invariant), the DiT a
    padded batch with ``encoder_attention_mask``. The unconditional branch (all-zero hidden states through
    the MCP, as CFG uses at inference) is trained with probability ``uncond_prob``. The probe's loss stays
    beside the flow loss here and in (d), at ``probe_weight``; the flow loss weighs latent pixels on and
    next to objects up (``dit_object_weight``). On edit rows, the copy loss (:func:`copy_attention_loss`,
    training only) asks head 0 of one cross-attention layer to attend from each latent cell to the source
    image token it should copy (:func:`copy_map`): without it the DiT's cross-attention from a cell to the
    image token of the same cell stays at chance (1–4%, every head and layer) and the edits redraw the
    source's objects in the wrong colours and shapes.
(d) **joint post-training**: generation (caption → scene), editing (edit prompt with the source image's
    tokens → the edited scene's latents) and VQA (``ce_weight`` × CE) together; the LLM, projector, MCP
    and DiT train, the vision tower stays frozen (its features are cached; the paper trains it at a low LR).

Stage (a) runs in a worker process beside (b1) and (b2); stages (c0), (c) and (d) are data-parallel over
``data_parallel`` processes (:mod:`mobile_o_ros.shapes.parallel`). Everything is seeded (for a given
number of processes); :func:`train_demo` writes a checkpoint folder that
:func:`mobile_o_ros.reference.checkpoint.load_checkpoint` loads strictly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
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
from mobile_o_ros.shapes import parallel, world
from mobile_o_ros.tokenizer_factory import build_tiny_tokenizer

Log = Callable[[str], None]

#: BPE vocabulary size of the shapes tokenizer (before the six special tokens).
TOKENIZER_VOCAB = 1000


@dataclass
class Recipe:
    """Sizes and steps of every stage (defaults: the full recipe; its time on 2 CPU cores is in the model
    card and ``training_report.json``)."""

    # (a) autoencoder
    ae_steps: int = 400
    ae_batch: int = 16
    ae_lr: float = 3e-3
    ae_object_weight: float = 4.0
    ae_latent_l2: float = 1e-3
    ae_clip: float = 5.0
    # (b1) vision tower pre-training (dense labels)
    vis_steps: int = 150
    vis_batch: int = 16
    vis_lr: float = 3e-3
    # (b2) VQA + caption QA (projector + LLM, cached vision features)
    vlm_short_steps: int = 150
    vlm_steps: int = 300
    vlm_images: int = 8
    vlm_rounds: int = 2  # question rounds per image (one prefix per image; questions are cheap)
    vlm_captions: int = 16
    vlm_lr: float = 1e-3
    # × the attention loss of vqa_losses_shared, in (b2) and (d). Measured after 400 (b2) steps (VQA on 300
    # held-out questions; caption slots the (c0) probe then reads): 0 → 61.7%, 0.98; 1.0 → 73.0%, 0.64
    # (0.59 in two more runs); 0.5 → 70.3%, 1.00. Layer 1 instead of 2: 68.7%, 0.70; 3: 73.0%, 0.80;
    # 2 and 3: 73.0%, 0.81. After 450 steps at 1.0 (layer 2), (c0) read 0.82: when (c0) leaves its plateau
    # varies between runs.
    vqa_attention_weight: float = 1.0
    # How much the position and shape questions weigh in the VQA losses of (b2) and (d) (others: 1).
    # Measured, 300 more (b2) steps from the same state (300 held-out questions): without 81.3% (position
    # 40%), with 87.7% (position 80%); position questions alone: position 85%. The tokens say where
    # objects are (a linear read-out finds it at 99% in every LLM layer); carrying it to the answer loses
    # out to the easier questions. (Measured as repeated questions; weights give the same losses without
    # running the repeats through the LLM.)
    vqa_question_weights: tuple[tuple[str, float], ...] = (("position", 3.0), ("shape", 2.0))
    vqa_attention_layers: tuple[int, ...] = (2,)
    # cached sets for (b2), (c) and (d)
    gen_scenes: int = 3000
    src_scenes: int = 1500
    # (c0) conditioning: LLM + MCP on a slot read-out of the MCP output (ConditioningProbe), and the VQA
    # loss (× ce_weight) on cond_vqa images per step so that the LLM keeps answering. Measured from the
    # same (b2) state (slots the probe reads right for captions / edit prompts, then VQA on 300 held-out
    # questions): 6 edit rows, LLM LR 3e-4, no VQA: 0.81 / 0.56; 18 edit rows: 0.82 / 0.73; 18 rows at LR
    # 1e-3: 1.00 / 0.76 but VQA 3%; 18 rows at 1e-3 with 4 VQA images: 1.00 / 0.73, VQA 90.0%; the same
    # at LR 3e-4: 0.82 / 0.65, VQA 86.3%; 30 rows at 1e-3 with 4 VQA images: 1.00 / 0.79 (data-parallel).
    # 600 steps read edits at 0.85 but the finished model edits no better: 33.7% of 300 held-out edits
    # (shipped recipe 35.7%), generation 83% of 100 captions; so the read-out is not what limits editing.
    cond_steps: int = 350
    cond_batch: int = 24
    cond_edits: int = 30
    cond_vqa: int = 4
    cond_lr: float = 2e-3
    cond_llm_lr: float = 1e-3
    probe_weight: float = 0.1  # the probe's loss beside the flow loss in (c) and (d)
    # (c) DiT + MCP
    dit_steps: int = 2100  # 1500: generation 47% (100 held-out captions), 2100: 56%; both data-parallel
    dit_batch: int = 32
    dit_lr: float = 2e-3
    uncond_prob: float = 0.1
    train_shift: float = 3.0
    high_noise: float = 0.0
    # flow loss × (1 + this) on and next to objects (latent pixels); 0 → 4: generation 43% → 52%, editing
    # 3% → 10% (60 captions, 30 edits; same prefix, 1500 + 400 steps)
    dit_object_weight: float = 4.0
    # Edit rows per step in (c) beside the dit_batch caption rows (the LLM frozen), and on them the flow
    # loss also weighed on and next to the source's objects (``dit_edit_source_weight``), so that the cells
    # a remove or a move empties count as much as those it draws (without, they weigh 1 of 1 + 4). Measured
    # from one (b2) state with the copy loss below (120 held-out edits; (c) time): 8 rows 32.5% (767 s);
    # 24 rows 37.5% (1110 s); 16 rows with source weights 41.7% (894 s), generation 79.0% of 200 captions
    # (77.0% with 8 rows); the same with a further × 3 where the edit changes pixels: 38.3% (not kept).
    # From that 16-row (c) state, (d) with other draws: 36.7%; 24 edit rows in (d) 35.8%; 24 edit + 6
    # caption rows 39.2%; 600 steps 33.3%: run-to-run spread is ~±5 points, larger than these differences.
    # Trading caption rows for edit rows (dit_batch 24, dit_edits 24): editing 37.5% of the 120, generation
    # 69% of 100 captions: worse at both. Edit rows' flow loss × 3 against caption rows' (an option, since
    # removed): editing 28.3% of 300 held-out edits (shipped 35.7%), generation 61% of 100: worse at both.
    dit_edits: int = 16
    dit_edit_source_weight: bool = True
    dit_train_llm: bool = False
    dit_train_mcp: bool = True
    # × the copy loss (:func:`copy_attention_loss`) on edit rows in (c) and (d): head 0 of the DiT's
    # cross-attention in each layer of ``dit_copy_layers`` attends, from each latent cell the edit leaves
    # unchanged, to the source image's token of the same cell (with ``dit_copy_changed``, from the changed
    # cells too, as :func:`copy_map` says). Measured from one (b2) state, (c0) with 30 edit rows, (c) with 8
    # edit rows (200 held-out captions / 120 edits): no copy loss 76.0% / 16.7% (stop 19's model, 18 (c0)
    # edit rows, none in (c)); unchanged cells, layer 1: 80.0% / 21.7%; all cells, layer 1: 74.0% / 26.7%;
    # all cells, layer 2: 77.0% / 32.5%. Without it, attention from a cell to its own image token is 1–4% in
    # every head and layer; with it, head 0 puts 0.97–0.99 there.
    dit_copy_weight: float = 0.3
    # Each of these layers' head 0 gets the loss (summed). Layers (1, 2): editing 32.7% of 300 held-out edits
    # (layer 2 alone, the shipped model: 35.7%), generation 89% of 100 captions (shipped: 79.0% of 200).
    dit_copy_layers: tuple[int, ...] = (2,)
    dit_copy_changed: bool = True
    # × the probe's referent loss (:meth:`ConditioningProbe.referent_loss`) on edit rows in (c) and (d): the
    # input of layer ``dit_referent_layer``'s cross-attention must say, per token, whether it lies on the
    # object the instruction names (source) and where that object goes (target), at every noise level
    # (before the noisy latent shows where it is). Measured in layer 2 from one (b2) state, the recipe
    # then otherwise as shipped, no content head (300 held-out edits / 100 captions): 0.3 → 39.7% (recolour
    # 44%, remove 18%, move 57%) / 82%; 1.0 → 38.3% / 84%; the model of the recipe without it: 35.7% (41%,
    # 19%, 47%). From scratch (seed 0): 49.3% (53%, 36%, 59%) of 300 edits, 84.0% of 200 captions; with the
    # content head below and this head in layer 3: 65.0% (72%, 47%, 76%), 91.5%; at 1.0 and 3.0: below. Not
    # kept: the same kind of loss in the LLM (the edit prompt's last token attending to the named object's
    # image tokens, as VQA's attention loss): 29.7% / 71%; that token already put ~0.75 of its attention
    # there.
    # With the content head and this head in layer 3, from the same (b2) state: 0.3 → 65.0% (recolour 74%,
    # remove 48%, move 73%) / 91%; 1.0 → 73.0% (74%, 63%, 82%) / 88%; 2.0 → 77.7% (77%, 77%, 79%) / 91%;
    # 3.0 → 79.0% (78%, 77%, 82%) / 90%. From scratch (seed 0), 300 held-out edits / 200 captions: 1.0 →
    # 71.3% (76%, 56%, 82%) / 93.0%; 3.0 (the shipped model) → 77.7% (82%, 64%, 87%) / 89.5%.
    dit_referent_weight: float = 3.0
    # Layer 1 instead of 2 (same (b2) state): 34.3% / 78%. Layer 3 (after the copy head of layer 2, whose
    # block can match the copied token against the instruction), with the content head in layer 4: below.
    dit_referent_layer: int = 3
    # × the probe's content loss (:meth:`ConditioningProbe.content_loss`) on all conditional rows in (c) and
    # (d): the input of layer ``dit_content_layer``'s cross-attention must say, per token, the colour and
    # shape of what the target image shows there (a supervised REPA-like alignment of the DiT's tokens).
    # Measured from the same (b2) state as the referent head (300 held-out edits / 100 captions), with the
    # referent head at 0.3: 0 → 39.7% / 82%; 0.3 → 58.7% (recolour 68%, remove 37%, move 71%) / 94%; 1.0 →
    # 59.7% (61%, 45%, 73%) / 92%. Most failed removes (27 of 29 of 60) took another object away instead:
    # the cells did not know which object the instruction names. With the referent head moved from layer 2
    # to 3 and this head from 3 to 4 (weight 0.3): 65.0% (74%, 48%, 73%) / 91%.
    dit_content_weight: float = 0.3
    dit_content_layer: int = 4
    # (d) joint
    joint_steps: int = 400
    joint_gen: int = 12
    joint_edit: int = 12
    joint_vqa: int = 4
    joint_lr: float = 1e-3
    joint_llm_lr: float = 3e-4
    ce_weight: float = 0.5  # paper: 0.2; raised to guard VQA while the flow loss trains the LLM (untested)
    # misc
    parallel_autoencoder: bool = True  # stage (a) in a worker process alongside (b1) and (b2)
    data_parallel: int = 2  # processes (1 torch thread each) sharing every batch of stages (c0), (c), (d)
    warmup_frac: float = 0.05
    log_every: int = 50

    @classmethod
    def quick(cls) -> Recipe:
        """A few steps of every stage on tiny sets (for tests)."""
        return cls(
            ae_steps=12,
            ae_batch=4,
            vis_steps=9,
            vis_batch=4,
            vlm_short_steps=5,
            vlm_steps=9,
            vlm_images=2,
            vlm_captions=2,
            gen_scenes=24,
            src_scenes=8,
            cond_steps=9,
            cond_batch=6,
            cond_edits=2,
            cond_vqa=2,
            dit_steps=24,
            dit_batch=8,
            dit_edits=2,
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


def pad_labels(labels: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Right-pad per-row label vectors to ``mask``'s [B, L] with −100 (ignored by the CE)."""
    lab = torch.full(mask.shape, -100, dtype=torch.long)
    for i, la in enumerate(labels):
        lab[i, : la.shape[0]] = la
    return lab


def mcp_inputs_batch(model: MobileO, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded LLM prefill → hidden_states[-4:] stacked [B, 4, L, D] (positions past a row's length: junk)."""
    out = model.llm.model(
        inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False
    )
    return torch.stack(out.hidden_states[-model.mcp.num_layers :], dim=1)


def conditioning_batch(
    model: MobileO, stacked: torch.Tensor, lengths: Sequence[int], uncond: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """MCP per row at its true length (zeros for unconditional rows) → padded [B, L, C] and the DiT mask.

    Rows of the same length (and kind) go through the MCP together: its rows are independent, only padding
    would change them, and one call per length is much cheaper than one per row on a CPU."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (n, null) in enumerate(zip(lengths, uncond, strict=True)):
        groups.setdefault((int(n), bool(null)), []).append(i)
    outs: list[torch.Tensor] = [stacked.new_empty(0)] * len(lengths)
    for (n, null), rows in groups.items():
        h = stacked[rows, :, :n]
        y = model.mcp(torch.zeros_like(h) if null else h)
        for k, i in enumerate(rows):
            outs[i] = y[k]
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
    per_row: bool = False,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rectified-flow MSE: x_t = (1−σ)x0 + σε, target ε − x0, timestep t = 1000σ (facts §8); with
    ``per_row``, each row's mean [B] instead of the batch mean.

    ``shift`` 1: σ = t/1000 with t uniform in 1..1000 (the reference). ``shift`` s > 1:
    σ = s·u / (1 + (s−1)·u) with u uniform, the inference schedule's shift. A fraction ``high_noise`` of
    the rows instead draws σ uniform in [0.9, 1], where the caption is almost the only information: with
    few CPU steps the model otherwise learns to read the noisy latent long before it learns to lay a scene
    out from text. ``weight`` [B, 1, H, W] weighs the squared error per latent pixel (each row's mean is
    divided by its weights' mean, so the loss keeps its scale).
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
    err = (v - (eps - x0)).pow(2)
    if weight is not None:
        err = err * (weight / weight.flatten(1).mean(1).view(b, 1, 1, 1))
    rows = err.flatten(1).mean(1)
    return rows if per_row else rows.mean()


def join_conditioning(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (conditioning [B_i, L_i, C], mask [B_i, L_i]) batches into one, right-padded to the longest
    (padding masked out): one DiT call instead of several, which on a CPU costs little more than one of
    them (measured on 2 cores: the DiT's forward and backward take ~0.5 s for a batch of 24, ~0.37 s for
    one of 12)."""
    n = max(c.shape[1] for c, _ in parts)
    conds = [F.pad(c, (0, 0, 0, n - c.shape[1])) for c, _ in parts]
    masks = [F.pad(m, (0, n - m.shape[1])) for _, m in parts]
    return torch.cat(conds), torch.cat(masks)


# ------------------------------------------------------------------------------------ conditioning probe
def slot_labels(scene: world.Scene) -> torch.Tensor:
    """What a scene shows per slot → int64 [len(POSITIONS) + 1, 3]: for each named position (in
    ``world.POSITIONS`` order) the colour, shape and size class of its object, indexed as the dense vision
    labels' classes (0: nothing there); the last row holds the background's
    index in ``world.BACKGROUNDS`` (then 0, 0)."""
    rows = []
    for position in world.POSITIONS:
        o = scene.at(position)
        if o is None:
            rows.append([0, 0, 0])
        else:
            rows.append(
                [_COLOUR_CLASSES.index(o.colour), _SHAPE_CLASSES.index(o.shape), _SIZE_CLASSES.index(o.size)]
            )
    rows.append([list(world.BACKGROUNDS).index(scene.background), 0, 0])
    return torch.tensor(rows, dtype=torch.long)


class ConditioningProbe(torch.nn.Module):
    """A training-only read-out of the DiT's conditioning (the MCP output; not part of the checkpoint).

    One learned query per named position, and one for the background, attends (softmax, one head) over the
    conditioning tokens; linear heads classify what the scene shows in that slot (:func:`slot_labels`). The
    DiT's cross-attention reads the same tokens the same way (a query per image location), so a
    conditioning that the probe can read is one the DiT can learn from. Measured (prototype, 50 held-out
    captions): from the flow loss alone the DiT learns almost nothing of where things go, since the MCP
    output for "on the left" and "on the right" differed by 2% (colour words: 36%); 600 DiT steps drew 0%
    of the captions fully right (21% of objects in the right colour), and 24% (97%) after a 200-step
    probe stage with the probe's loss kept at 0.1 beside the flow loss.
    """

    def __init__(self, cond_dim: int, dim: int = 64, dit_dim: int = 0) -> None:
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(len(world.POSITIONS) + 1, dim) * 0.5)
        self.key = torch.nn.Linear(cond_dim, dim)
        self.value = torch.nn.Linear(cond_dim, dim)
        self.colour = torch.nn.Linear(dim, len(_COLOUR_CLASSES))
        self.shape = torch.nn.Linear(dim, len(_SHAPE_CLASSES))
        self.size = torch.nn.Linear(dim, len(_SIZE_CLASSES))
        self.background = torch.nn.Linear(dim, len(world.BACKGROUNDS))
        # With ``dit_dim``: per DiT token, whether it lies on the object an edit names in the source and where
        # that object is in the target (:meth:`referent_loss`).
        self.referent = torch.nn.Linear(dit_dim, 2) if dit_dim else None
        # With ``dit_dim``: per DiT token, the colour and shape the image shows there (:meth:`content_loss`).
        n_content = len(_COLOUR_CLASSES) + len(_SHAPE_CLASSES)
        self.content = torch.nn.Linear(dit_dim, n_content) if dit_dim else None

    def forward(
        self, cond: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning [B, L, C], its mask [B, L] (1: token) and :func:`slot_labels` [B, P + 1, 3] →
        (sum of the four mean cross-entropies, fraction of position slots read fully right)."""
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(cond)) / self.queries.shape[1] ** 0.5
        attn = scores.masked_fill(mask[:, None, :] == 0, -1e4).softmax(-1)
        read = torch.einsum("bql,bld->bqd", attn, self.value(cond))
        slots, bg = read[:, :-1], read[:, -1]
        want = labels[:, :-1]
        heads = (self.colour(slots), self.shape(slots), self.size(slots))
        loss = F.cross_entropy(self.background(bg), labels[:, -1, 0])
        right = torch.ones(want.shape[:2], dtype=torch.bool)
        for k, logits in enumerate(heads):
            loss = loss + F.cross_entropy(logits.flatten(0, 1), want[..., k].flatten())
            right &= logits.detach().argmax(-1) == want[..., k]
        return loss, right.float().mean()

    def referent_loss(self, hidden: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Binary CE of the referent head on DiT hidden states [E, N, D] against :meth:`Cache.referent_cells`
        [E, N, 2] (edit rows)."""
        if self.referent is None:
            raise ValueError("this probe has no referent head (dit_dim=0)")
        return F.binary_cross_entropy_with_logits(self.referent(hidden), cells)

    def content_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Balanced CE of the content head's colour and shape on DiT hidden states [B, N, D] against
        :meth:`Cache.content_labels` [B, N, 2] (summed over the two)."""
        if self.content is None:
            raise ValueError("this probe has no content head (dit_dim=0)")
        logits = self.content(hidden).flatten(0, 1)
        n = len(_COLOUR_CLASSES)
        flat = labels.flatten(0, 1)
        return _balanced_ce(logits[:, :n], flat[:, 0]) + _balanced_ce(logits[:, n:], flat[:, 1])


def make_probe(config: MobileOConfig) -> ConditioningProbe:
    """The training probe of a model config: conditioning read-out and the DiT's referent head."""
    dit = config.dit
    return ConditioningProbe(
        int(dit["caption_channels"]), dit_dim=int(dit["num_attention_heads"]) * int(dit["attention_head_dim"])
    )


def _probe_loss(
    probe: ConditioningProbe | None,
    cond: torch.Tensor,
    mask: torch.Tensor,
    keep: torch.Tensor,
    scenes: Sequence[world.Scene],
) -> torch.Tensor:
    """The probe's loss over the conditional rows (``keep``) of a batch; 0 without a probe or such rows."""
    if probe is None or not bool(keep.any()):
        return cond.new_zeros(())
    labels = torch.stack([slot_labels(s) for s, k in zip(scenes, keep.tolist(), strict=True) if k])
    return probe(cond[keep], mask[keep], labels)[0]


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
    seeds = _seed_stream(rng)
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


def training_questions(scene: world.Scene, rng: random.Random, rounds: int = 1) -> list[world.Question]:
    """:func:`world.all_questions` plus the background's colour (a training-only question: without it
    nothing asks the LLM to keep the caption's last words, and the DiT then draws random backgrounds)."""
    bg = world.Question("background", "what colour is the background?", scene.background)
    return [*world.all_questions(scene, rng, rounds), bg]


def short_vqa_prompt(question: str) -> str:
    """The warm-up format of stage (b2): ``<image>`` newline question newline, no chat template."""
    return f"{prompts.IMAGE_PLACEHOLDER}\n{question}\n"


@contextlib.contextmanager
def eager_attention(model: MobileO) -> Iterator[None]:
    """Run the LLM with eager attention inside the block (SDPA returns no attention weights)."""
    config = model.llm.config
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def vqa_losses_shared(
    model: MobileO,
    tok: PromptTokens,
    image_embeds: torch.Tensor,
    questions: Sequence[Sequence[world.Question]],
    template: Callable[[str], str] = prompts.vqa_prompt,
    image_objects: Sequence[np.ndarray] | None = None,
    attention_layers: Sequence[int] = (),
    category_weights: Sequence[tuple[str, float]] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer CE (mean next-token CE over the answer tokens) of every (image, question) pair, computing
    each image's prompt prefix (text before the question: system turn, user header, image tokens) once
    (:func:`continue_from_prefixes`). ``template`` turns a question into a prompt with one ``<image>``.

    Returns (answer CE, attention loss). With ``image_objects`` (per image, :func:`token_objects` of its
    image tokens) and ``attention_layers``, the attention loss is the mean over those layers and over the
    questions about objects (``Question.objects``) of −log(the attention mass that the layer's heads,
    averaged, put from the token that predicts the answer on the image tokens of those objects); else 0.
    It teaches the LLM where to look, which the answer CE alone teaches slowly: measured, the shipped
    4-layer LLM answered "what colour is the triangle?" about three-shape scenes right 41% of the time,
    about as often as naming a random object's colour.

    ``category_weights`` ((category, weight) pairs, others 1) weigh each question's answer tokens and
    attention term in both means, as that many copies of the question would."""
    weight_of = dict(category_weights)
    ids = tok.image_prompt(template("?"))
    cut = ids.index(prompts.IMAGE_TOKEN_INDEX)
    n = image_embeds.shape[0]
    parts = [image_embeds]
    if cut:
        parts.insert(0, model.embed_tokens(torch.tensor(ids[:cut])[None]).expand(n, -1, -1))
    prefix = torch.cat(parts, dim=1)
    rows, seqs, labels, weights, targets = [], [], [], [], []
    for i, qs in enumerate(questions):
        for q in qs:
            q_ids = tok.image_prompt(template(q.question))
            tail = q_ids[q_ids.index(prompts.IMAGE_TOKEN_INDEX) + 1 :]
            answer = [*tok.encode(q.answer), tok.eos]
            rows.append(i)
            seqs.append(model.embed_tokens(torch.tensor(tail + answer)[None])[0])
            labels.append(torch.tensor([-100] * len(tail) + answer))
            weights.append(float(weight_of.get(q.category, 1.0)))
            if image_objects is not None and q.objects:
                on = np.isin(image_objects[i], [k + 1 for k in q.objects])
                targets.append((len(rows) - 1, len(tail) - 1, (cut + np.flatnonzero(on)).tolist()))
    supervise = bool(attention_layers) and any(t[2] for t in targets)
    out = continue_from_prefixes(
        model, list(prefix), rows, seqs, labels, output_attentions=supervise, weights=weights
    )
    if not supervise:
        return out.loss, prefix.new_zeros(())
    terms, term_weights = [], []
    for layer in attention_layers:
        probs = out.attentions[layer].mean(1)  # [rows, tail, prefix + tail], heads averaged
        for row, query, keys in targets:
            if keys:
                terms.append(-torch.log(probs[row, query, keys].sum() + 1e-6))
                term_weights.append(weights[row])
    w = torch.tensor(term_weights)
    return out.loss, (torch.stack(terms) * w).sum() / w.sum()


def continue_from_prefixes(
    model: MobileO,
    prefixes: Sequence[torch.Tensor],
    rows: Sequence[int],
    seqs: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    output_attentions: bool = False,
    weights: Sequence[float] | None = None,
) -> Any:
    """The LLM over ``prefixes[rows[j]]`` followed by ``seqs[j]`` (embeddings [L, D]) for every j, each
    prefix computed once: a causal LLM's prefix states do not depend on what follows, so every
    continuation runs from its prefix's KV cache (gradients flow through it). Prefixes are right-padded
    and masked, and each continuation's positions start at its own prefix's length, so each row sees the
    positions its whole sequence would. ``labels`` (per continuation, −100: no loss) give ``.loss``, the
    mean next-token CE (with ``weights``, per continuation, the weighted mean over the labelled tokens);
    with ``output_attentions`` (eager attention) ``.attentions`` hold per layer
    [rows, heads, continuation, padded prefix + continuation]."""
    prefix, prefix_mask = pad_batch(prefixes)
    cache = model.llm.model(inputs_embeds=prefix, attention_mask=prefix_mask, use_cache=True).past_key_values
    index = torch.tensor(list(rows))
    cache.batch_select_indices(index)
    embeds, mask = pad_batch(seqs)
    positions = prefix_mask.sum(1)[index][:, None] + torch.arange(embeds.shape[1])[None]
    kwargs: dict[str, Any] = dict(
        inputs_embeds=embeds,
        attention_mask=torch.cat([prefix_mask[index], mask], dim=1),
        position_ids=positions,
        past_key_values=cache,
        labels=pad_labels(labels, mask),
        use_cache=True,
    )
    if weights is not None:
        targets = kwargs.pop("labels")
    if not output_attentions:
        out = model.llm(**kwargs)
    else:
        with eager_attention(model):
            out = model.llm(**kwargs, output_attentions=True)
    if weights is not None:
        out.loss = weighted_next_token_ce(out.logits, targets, torch.tensor(list(weights)))
    return out


def weighted_next_token_ce(
    logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor
) -> torch.Tensor:
    """Next-token CE of ``logits`` [B, T, V] against ``labels`` [B, T] (−100: none), each row's tokens
    weighted by ``row_weights`` [B]; the weighted mean over the labelled tokens (all weights 1: the
    mean CE that HF's causal-LM loss gives)."""
    target = labels[:, 1:]
    ce = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target.clamp(min=0), reduction="none"
    )  # [B, T-1]
    w = row_weights[:, None] * (target != -100)
    return (ce * w).sum() / w.sum()


def vqa_loss_shared(
    model: MobileO,
    tok: PromptTokens,
    image_embeds: torch.Tensor,
    questions: Sequence[Sequence[world.Question]],
    template: Callable[[str], str] = prompts.vqa_prompt,
) -> torch.Tensor:
    """The answer CE of :func:`vqa_losses_shared` (no attention supervision)."""
    return vqa_losses_shared(model, tok, image_embeds, questions, template)[0]


def _image_objects(model: MobileO, scenes: Sequence[world.Scene], recipe: Recipe) -> list[np.ndarray] | None:
    """:func:`token_objects` of each scene's image tokens when the recipe supervises VQA attention."""
    if not recipe.vqa_attention_weight or not recipe.vqa_attention_layers:
        return None
    grid = round(model.config.num_image_tokens**0.5)
    return [token_objects(s, grid) for s in scenes]


def caption_qa_parts(caption: str, question: str, short: bool) -> tuple[str, str]:
    """A question about a caption, answered from the text, as (the caption part, the question part); the
    caption part is the same for every question about it, and the two tokenize as their concatenation
    does (they meet at a newline or a special token). In the chat format the caption sits in the
    generation prompt (as the DiT's conditioning will see it) and the question follows in a new user
    turn; the short warm-up format is caption newline question newline."""
    if short:
        return f"{caption}\n", f"{question}\n"
    turn = f"{prompts.IM_START}user\n{question}{prompts.IM_END}\n{prompts.IM_START}assistant\n"
    return f"{prompts.generation_prompt(caption)}{prompts.IM_END}\n", turn


def caption_qa_loss(
    model: MobileO, tok: PromptTokens, scenes: Sequence[world.Scene], rng: random.Random, short: bool
) -> torch.Tensor:
    """Answer CE of every :func:`training_questions` question about each scene, asked of its caption
    (each caption's tokens computed once, :func:`continue_from_prefixes`)."""
    prefixes, rows, seqs, labels = [], [], [], []
    for scene in scenes:
        cap = world.caption(scene, rng)
        for q in training_questions(scene, rng):
            head, turn = caption_qa_parts(cap, q.question, short)
            prompt = tok.encode(turn)
            answer = [*tok.encode(q.answer), tok.eos]
            rows.append(len(prefixes))
            seqs.append(model.embed_tokens(torch.tensor(prompt + answer)[None])[0])
            labels.append(torch.tensor([-100] * len(prompt) + answer))
        prefixes.append(model.embed_tokens(torch.tensor(tok.encode(head))[None])[0])
    return continue_from_prefixes(model, prefixes, rows, seqs, labels).loss


#: Classes of the dense vision labels (index 0: background / no object under the token).
_COLOUR_CLASSES = ("background", *world.COLOURS)
_SHAPE_CLASSES = ("background", *world.SHAPES)
_SIZE_CLASSES = ("background", *world.SIZES)
_POSITION_CLASSES = ("background", *world.POSITIONS)


def token_objects(scene: world.Scene, grid: int, min_fraction: float = 0.15, cell: int = 16) -> np.ndarray:
    """Which object each token of a row-major ``grid × grid`` image grid shows → int64 [grid²]: ``k + 1`` for
    ``scene.objects[k]`` when it covers most of the cell (at least ``min_fraction``), else 0."""
    lab = world.render_labels(scene, grid * cell).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
    lab = lab.reshape(grid * grid, cell * cell)
    counts = np.stack([(lab == k + 1).sum(1) for k in range(len(scene.objects))], axis=1)
    present = counts.max(1) >= min_fraction * cell * cell
    return ((counts.argmax(1) + 1) * present).astype(np.int64)


def token_labels(scene: world.Scene, grid: int, min_fraction: float = 0.15, cell: int = 16) -> np.ndarray:
    """Dense labels per token of a row-major ``grid × grid`` image grid → int64 [grid², 7]: the colour,
    shape, size and named position of the object covering most of the cell (:func:`token_objects`; else 0,
    background), the cell's row and column, and the scene's background colour."""
    which = token_objects(scene, grid, min_fraction, cell)

    def per_object(values: list[int]) -> np.ndarray:
        return np.asarray([0, *values])[which]

    objs = scene.objects
    return np.stack(
        [
            per_object([_COLOUR_CLASSES.index(o.colour) for o in objs]),
            per_object([_SHAPE_CLASSES.index(o.shape) for o in objs]),
            per_object([_SIZE_CLASSES.index(o.size) for o in objs]),
            per_object([_POSITION_CLASSES.index(o.position) for o in objs]),
            np.arange(grid).repeat(grid),
            np.tile(np.arange(grid), grid),
            np.full(grid * grid, list(world.BACKGROUNDS).index(scene.background)),
        ],
        axis=1,
    ).astype(np.int64)


def _label_heads(grid: int) -> list[int]:
    """Class counts of the :func:`token_labels` columns."""
    return [
        len(_COLOUR_CLASSES),
        len(_SHAPE_CLASSES),
        len(_SIZE_CLASSES),
        len(_POSITION_CLASSES),
        grid,
        grid,
        len(world.BACKGROUNDS),
    ]


def _balanced_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the object tokens (label > 0) plus mean CE over the background tokens: with a plain
    mean the ~85% background tokens dominate."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    obj = labels > 0
    loss = ce[~obj].mean() if bool((~obj).any()) else ce.sum() * 0
    return loss + ce[obj].mean() if bool(obj.any()) else loss


def dense_loss(logits: torch.Tensor, labels: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE of the :func:`token_labels` heads (logits [B, N, sum(heads)], labels [B, N, 7]) and, per
    object token, whether all four object attributes are right. The object attributes (first four
    columns) use :func:`_balanced_ce`."""
    loss = logits.new_zeros(())
    right = []
    off = 0
    obj = labels[..., 0] > 0
    for j, n in enumerate(_label_heads(grid)):
        lo = logits[..., off : off + n]
        off += n
        if j < 4:
            loss = loss + _balanced_ce(lo.flatten(0, 1), labels[..., j].flatten())
            right.append((lo.argmax(-1) == labels[..., j])[obj])
        else:
            loss = loss + F.cross_entropy(lo.flatten(0, 1), labels[..., j].flatten())
    return loss, torch.stack(right).all(0)


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
    head = torch.nn.Linear(model.config.mm_hidden_size, sum(_label_heads(grid)))
    params = _params(tower, head)
    opt = torch.optim.AdamW(params, lr=recipe.vis_lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.vis_steps, recipe.warmup_frac)
    seeds = _seed_stream(rng)
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


@dataclass
class Cache:
    """Fixed training sets: target scenes with latents, and edits into some of them whose source images'
    vision features are cached (the tower is frozen after stage b1). The sources also serve VQA."""

    scenes: list[world.Scene]
    sources: list[world.Edit]
    source_feats: torch.Tensor  # [M, num_image_tokens, mm_hidden] (vision tower output, before the projector)
    source_latent_index: list[int]
    latents: torch.Tensor | None = None  # [N, *latent_shape], × scaling_factor (after stage a)
    object_masks: torch.Tensor | None = None  # [N, 1, H, W] (latent grid): 1 on and next to objects
    seconds: float = 0.0
    copy_maps: dict[tuple[int, int, bool], torch.Tensor] | None = None  # memo of copy_map per edit
    source_masks: torch.Tensor | None = None  # [M, 1, H, W]: object_masks of the edits' source scenes
    referents: dict[tuple[int, int], torch.Tensor] | None = None  # memo of referent_cells per edit
    contents: dict[tuple[int, int], torch.Tensor] | None = None  # memo of content_labels per scene

    def content_labels(self, i: int, grid: int) -> torch.Tensor:
        """int64 [grid², 2] of target scene ``i`` (memoised): the colour and shape class under each token
        (:func:`token_labels`' first two columns; 0: background)."""
        if self.contents is None:
            self.contents = {}
        if (i, grid) not in self.contents:
            self.contents[(i, grid)] = torch.from_numpy(token_labels(self.scenes[i], grid)[:, :2].copy())
        return self.contents[(i, grid)]

    def copy_map(self, i: int, grid: int, changed: bool) -> torch.Tensor:
        """:func:`copy_map` of edit ``i`` (memoised)."""
        if self.copy_maps is None:
            self.copy_maps = {}
        key = (i, grid, changed)
        if key not in self.copy_maps:
            self.copy_maps[key] = copy_map(self.sources[i], grid, changed)
        return self.copy_maps[key]

    def referent_cells(self, i: int, grid: int) -> torch.Tensor:
        """float32 [grid², 2] of edit ``i`` (memoised): 1 on the tokens (row-major, :func:`token_objects`) of
        the object it names in the source, and on those of that object in the target (none for a remove)."""
        if self.referents is None:
            self.referents = {}
        if (i, grid) not in self.referents:
            e = self.sources[i]
            out = torch.zeros(grid * grid, 2)
            out[token_objects(e.source, grid) == e.source.objects.index(e.obj) + 1, 0] = 1.0
            k = edited_object_index(e)
            if k is not None:
                out[token_objects(e.target, grid) == k + 1, 1] = 1.0
            self.referents[(i, grid)] = out
        return self.referents[(i, grid)]

    def flow_weights(
        self, gi: Sequence[int], ei: Sequence[int], object_weight: float, with_source: bool = False
    ) -> torch.Tensor | None:
        """Per-latent-pixel weights of the flow loss for the captions of target scenes ``gi`` then edits
        ``ei`` (None when unweighted): 1 + ``object_weight`` on and next to the target's objects, and with
        ``with_source`` on an edit row also the source's (where a remove or a move takes an object away)."""
        if object_weight <= 0 or self.object_masks is None:
            return None
        masks = self.object_masks[[*gi, *(self.source_latent_index[i] for i in ei)]]
        if with_source and ei and self.source_masks is not None:
            source = self.source_masks[list(ei)]
            masks = torch.cat([masks[: len(gi)], torch.maximum(masks[len(gi) :], source)])
        return 1.0 + object_weight * masks


@torch.no_grad()
def build_cache(model: MobileO, recipe: Recipe, rng: random.Random, log: Log) -> Cache:
    """Draw ``gen_scenes`` target scenes and ``src_scenes`` edits into some of them; cache the sources'
    vision features (the latents follow in :func:`encode_latents`, once the autoencoder is trained)."""
    t0 = time.perf_counter()
    model.vision.eval()
    seeds = _seed_stream(rng)
    scenes = [world.make_scene(next(seeds)) for _ in range(recipe.gen_scenes)]
    index = [i % len(scenes) for i in range(recipe.src_scenes)]
    edits = [world.edit_into(scenes[i], rng) for i in index]
    tower = reparameterize(copy.deepcopy(model.vision)).eval()  # the inference form, as shipped (and faster)
    size = model.config.image_size
    feats = [
        tower(torch.stack([vision_input(world.render(e.source, 512), size) for e in edits[i : i + 50]]))
        for i in range(0, len(edits), 50)
    ]
    cache = Cache(scenes, edits, torch.cat(feats), index)
    cache.seconds = time.perf_counter() - t0
    log(f"[cache] {len(edits)} edit sources' vision features ({cache.seconds:.0f} s)")
    return cache


def latent_object_mask(scene: world.Scene, grid: int, size: int) -> torch.Tensor:
    """float32 [1, grid, grid]: 1 at latent pixels whose ``size / grid`` cell of a ``size`` px render shows
    part of an object, or that border one (where its outline is decided), else 0."""
    cell = size // grid
    on = world.render_labels(scene, size).reshape(grid, cell, grid, cell).any(axis=(1, 3))
    mask = torch.from_numpy(on.astype(np.float32))[None, None]
    return F.max_pool2d(mask, 3, stride=1, padding=1)[0]


@torch.no_grad()
def encode_latents(model: MobileO, cache: Cache, log: Log) -> None:
    """Encode the cache's target scenes with the trained VAE (× ``scaling_factor``)."""
    t0 = time.perf_counter()
    model.vae.eval()
    sf = float(model.config.vae["scaling_factor"])
    size = model.config.output_size
    lat = [
        model.vae.encode(
            torch.stack([vae_input(world.render(s, size)) for s in cache.scenes[i : i + 50]])
        ).latent
        for i in range(0, len(cache.scenes), 50)
    ]
    cache.latents = torch.cat(lat) * sf
    grid = cache.latents.shape[-1]
    cache.object_masks = torch.stack([latent_object_mask(s, grid, size) for s in cache.scenes])
    cache.source_masks = torch.stack([latent_object_mask(e.source, grid, size) for e in cache.sources])
    cache.seconds += time.perf_counter() - t0
    log(f"[cache] {len(cache.scenes)} scene latents ({time.perf_counter() - t0:.0f} s)")


def _image_vqa_losses(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    idx: Sequence[int],
    rng: random.Random,
    recipe: Recipe,
    rounds: int = 1,
    template: Callable[[str], str] = prompts.vqa_prompt,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer CE, attention loss) of :func:`vqa_losses_shared` on ``rounds`` rounds of training questions
    about each cached source image ``idx``, with the recipe's attention layers and question weights."""
    img = model.mm_projector(cache.source_feats[list(idx)])
    qsets = [training_questions(cache.sources[i].source, rng, rounds) for i in idx]
    objects = _image_objects(model, [cache.sources[i].source for i in idx], recipe)
    return vqa_losses_shared(
        model,
        tok,
        img,
        qsets,
        template,
        objects,
        recipe.vqa_attention_layers,
        recipe.vqa_question_weights,
    )


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
    seeds = _seed_stream(rng)
    report = StageReport("vqa", total, 0.0)
    cap_losses: list[float] = []
    att_losses: list[float] = []
    t0 = time.perf_counter()
    m = len(cache.sources)
    for step in range(total):
        short = step < recipe.vlm_short_steps
        idx = [rng.randrange(m) for _ in range(recipe.vlm_images)]
        template = short_vqa_prompt if short else prompts.vqa_prompt
        loss, attention = _image_vqa_losses(model, tok, cache, idx, rng, recipe, recipe.vlm_rounds, template)
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


def _gen_batch(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    idx: Sequence[int],
    rng: random.Random,
    uncond_prob: float,
    train_llm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditioning, its mask, the target latents of captions of cached scenes ``idx`` and which rows are
    conditional."""
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
    """Conditioning, its mask, the target latents of cached edits ``idx`` (source image + instruction) and
    which rows are conditional."""
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
    """Conditioning [B, L, C], its mask and which rows are conditional (bool [B]); rows drawn with
    ``uncond_prob`` are CFG's null rows."""
    embeds, mask = pad_batch(seqs)
    if train_llm:
        stacked = mcp_inputs_batch(model, embeds, mask)
    else:
        with torch.no_grad():
            stacked = mcp_inputs_batch(model, embeds, mask)
    lengths = [int(s.shape[0]) for s in seqs]
    uncond = [rng.random() < uncond_prob for _ in seqs]
    cond, mask = conditioning_batch(model, stacked, lengths, uncond)
    return cond, mask, ~torch.tensor(uncond, dtype=torch.bool)


def _vqa_loss(
    model: MobileO, tok: PromptTokens, cache: Cache, idx: Sequence[int], rng: random.Random, recipe: Recipe
) -> torch.Tensor:
    """The VQA loss of (b2) (answer CE + ``vqa_attention_weight`` × attention loss, chat format) on questions
    about the cached source images ``idx``; 0 for none."""
    if not idx:
        return torch.zeros(())
    ce, attention = _image_vqa_losses(model, tok, cache, idx, rng, recipe)
    return ce + recipe.vqa_attention_weight * attention


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
    c1, m1, x1, k1 = _gen_batch(model, tok, cache, gi, rng, recipe.uncond_prob, train_llm=train_llm)
    parts, x0 = [(c1, m1)], [x1]
    l_probe = _probe_loss(probe, c1, m1, k1, [cache.scenes[i] for i in gi])
    if ei:
        c2, m2, x2, k2 = _edit_batch(model, tok, cache, ei, rng, recipe.uncond_prob, train_llm=train_llm)
        parts.append((c2, m2))
        x0.append(x2)
        l_probe = l_probe + _probe_loss(probe, c2, m2, k2, [cache.sources[i].target for i in ei])
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


def edited_object_index(edit: world.Edit) -> int | None:
    """Index in ``edit.target.objects`` of the object the edit recolours or moves (None for a remove)."""
    if edit.kind == "remove":
        return None
    where = edit.new_position or edit.obj.position
    return next(j for j, o in enumerate(edit.target.objects) if o.position == where)


def copy_map(edit: world.Edit, grid: int, changed: bool = False, cell: int = 8) -> torch.Tensor:
    """Where each latent cell of the edited image may copy from: bool [grid², grid²] (row-major target cell →
    source image tokens; a row of False: no copy asked).

    A cell whose pixels the edit leaves as they were copies its own token. With ``changed``, so do the cells
    of a recoloured object (its shape; the colour is the instruction's), a moved object's new cells copy the
    cells it stood on (shifted back by the move), and cells the edit leaves empty copy any token that shows
    only background; other changed cells ask nothing."""
    n, side = grid * grid, grid * cell
    src = world.render(edit.source, side).astype(np.int16)
    tgt = world.render(edit.target, side).astype(np.int16)
    same = (src == tgt).all(-1).reshape(grid, cell, grid, cell).all(axis=(1, 3)).reshape(n)
    out = np.zeros((n, n), dtype=bool)
    out[np.arange(n), np.arange(n)] = same
    if changed:
        labels = world.render_labels(edit.target, side).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
        labels = labels.reshape(n, cell * cell)

        def plain(img: np.ndarray) -> np.ndarray:  # cells that show only the background colour
            bg = np.asarray(world.BACKGROUNDS[edit.source.background], dtype=np.int16)
            return (img == bg).all(-1).reshape(grid, cell, grid, cell).all(axis=(1, 3)).reshape(n)

        empty, background = plain(tgt), plain(src)
        covered = np.zeros(n, dtype=bool)  # cells showing the recoloured or moved object
        k = edited_object_index(edit)
        if k is not None:
            covered = (labels == k + 1).any(1)
        for c in np.flatnonzero(~same):
            if covered[c] and edit.kind == "recolour":
                out[c, c] = True
            elif covered[c] and edit.kind == "move":
                x0, y0 = world.POSITIONS[edit.obj.position]
                x1, y1 = world.POSITIONS[edit.new_position or edit.obj.position]
                r = int(np.clip(round(c // grid - (y1 - y0) * grid), 0, grid - 1))
                col = int(np.clip(round(c % grid - (x1 - x0) * grid), 0, grid - 1))
                out[c, r * grid + col] = True
            elif empty[c]:
                out[c] = background
    return torch.from_numpy(out)


@contextlib.contextmanager
def cross_attention_tap(model: MobileO, layers: Sequence[int]) -> Iterator[dict[int, Any]]:
    """Record the inputs of the DiT's cross-attention in each of ``layers`` (layer → (module, hidden states,
    conditioning, mask bias)) while the block is open."""
    seen: dict[int, Any] = {}

    def recorder(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            seen[layer] = (module, hidden, kwargs["encoder_hidden_states"], kwargs.get("attention_mask"))

        return hook

    blocks = model.dit.transformer_blocks
    handles = [
        blocks[layer].attn2.register_forward_pre_hook(recorder(layer), with_kwargs=True) for layer in layers
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def cross_attention_probs(
    module: Any, hidden: torch.Tensor, cond: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The attention probabilities [B, heads, N, L] that SANA's cross-attention processor computes (its
    ``scaled_dot_product_attention``, written out)."""
    b = hidden.shape[0]
    q, k = module.to_q(hidden), module.to_k(cond)
    if module.norm_q is not None:
        q = module.norm_q(q)
    if module.norm_k is not None:
        k = module.norm_k(k)
    head_dim = k.shape[-1] // module.heads
    q = q.view(b, -1, module.heads, head_dim).transpose(1, 2)
    k = k.view(b, -1, module.heads, head_dim).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / head_dim**0.5
    if bias is not None:
        scores = scores + bias.view(b, 1, -1, bias.shape[-1])
    return scores.softmax(-1)


def copy_attention_loss(
    probs: torch.Tensor, image_start: Sequence[int], sources: torch.Tensor
) -> torch.Tensor:
    """−log of the attention that head 0 pays, from each latent cell with a copy source, to those image
    tokens (:func:`copy_map`), averaged over such cells: ``probs`` [E, heads, N, L] (edit rows),
    ``image_start`` the first image token's index per row, ``sources`` bool [E, N, N]."""
    n = sources.shape[-1]
    tokens = torch.as_tensor(list(image_start))[:, None] + torch.arange(n)[None]  # [E, N]
    p = probs[:, 0].gather(-1, tokens[:, None, :].expand(-1, probs.shape[2], -1))  # [E, cells, N]
    mass = (p * sources).sum(-1)
    asked = sources.any(-1).float()
    return -(torch.log(mass + 1e-6) * asked).sum() / asked.sum().clamp_min(1.0)


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
        c1, m1, _, _ = _gen_batch(model, tok, cache, gi, rng, 0.0, train_llm=True)
        c2, m2, _, _ = _edit_batch(model, tok, cache, ei, rng, 0.0, train_llm=True)
        l_gen, r_gen = probe(c1, m1, torch.stack([slot_labels(cache.scenes[i]) for i in gi]))
        l_edit, r_edit = probe(c2, m2, torch.stack([slot_labels(cache.sources[i].target) for i in ei]))
        vi = [rng.randrange(m) for _ in range(parallel.share(recipe.cond_vqa))]  # none: _vqa_loss gives 0
        l_vqa = _vqa_loss(model, tok, cache, vi, rng, recipe)
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
        l_vqa = _vqa_loss(model, tok, cache, vi, rng, recipe)
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
    """Fold the vision tower (inference form, as released) and write config.json + model.safetensors (and
    the world's vocabulary.json)."""
    from mobile_o_ros.shapes.vocabulary import write_vocabulary

    reparameterize(model.vision)
    model.eval()
    save_checkpoint(model, out_dir)
    write_vocabulary(out_dir)
    gen_cfg = {"eos_token_id": model.config.llm["eos_token_id"], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out_dir


def _train_autoencoder_apart(
    config: MobileOConfig, recipe: Recipe, seed: int
) -> tuple[dict[str, torch.Tensor], StageReport, float]:
    """Stage (a) in a worker process (one torch thread): the VAE's weights, the report, scaling_factor."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = build_model(config, vision_inference_mode=False)
    report = train_autoencoder(model, recipe, random.Random(seed), lambda m: print(m, flush=True))
    return model.vae.state_dict(), report, float(model.config.vae["scaling_factor"])


class AutoencoderJob:
    """Stage (a) with a seed of its own: in a spawned worker process while stages (b1) and (b2) run here
    (``recipe.parallel_autoencoder``; the autoencoder is independent of them, and the VLM stages leave a
    core partly idle), else in this process. ``result()`` loads the weights into ``model`` and returns
    the stage's report; the same seed gives the same weights either way."""

    def __init__(self, model: MobileO, recipe: Recipe, seed: int, log: Log) -> None:
        self.model, self.recipe, self.seed, self.log = model, recipe, seed, log
        self._pool: Any = None
        self._future: Any = None

    def __enter__(self) -> AutoencoderJob:
        if self.recipe.parallel_autoencoder:
            import concurrent.futures
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx)
            self._future = self._pool.submit(
                _train_autoencoder_apart, copy.deepcopy(self.model.config), self.recipe, self.seed
            )
            self.log("[a] autoencoder training in a worker process (1 thread)")
        return self

    def result(self) -> StageReport:
        """Wait for stage (a) (or run it here) and load its weights and ``scaling_factor`` into the model."""
        if self._future is None:
            torch.manual_seed(self.seed)
            self.model.vae.load_state_dict(
                build_model(self.model.config, vision_inference_mode=False).vae.state_dict()
            )
            return train_autoencoder(self.model, self.recipe, random.Random(self.seed), self.log)
        state, report, scaling = self._future.result()
        self.model.vae.load_state_dict(state)
        self.model.vae.eval()
        self.model.config.vae["scaling_factor"] = scaling
        return report

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def generation_stages(
    model: MobileO,
    tok: PromptTokens,
    cache: Cache,
    probe: ConditioningProbe,
    recipe: Recipe,
    rng: random.Random,
    log: Log,
) -> list[StageReport]:
    """Stages (c0), (c) and (d), in this process or as one rank of a data-parallel group (each rank draws
    its share of every batch from its own ``rng``; the gradients are averaged in :func:`_update`). The
    reported losses of (c0) and (c) are means over the ranks; the probe's read-outs and the parts of (d)'s
    loss are rank 0's (half of each batch)."""
    return [
        train_conditioning(model, tok, cache, probe, recipe, rng, log),
        train_dit(model, tok, cache, recipe, rng, log, probe),
        train_joint(model, tok, cache, recipe, rng, log, probe),
    ]


def _generation_stages_worker(
    config: MobileOConfig,
    state: dict[str, torch.Tensor],
    probe_state: dict[str, torch.Tensor],
    out_dir: Path,
    cache: Cache,
    recipe: Recipe,
    seed: int,
) -> None:
    """Rank ≥ 1 of :func:`generation_stages`: the same model and probe as rank 0, its own data."""
    model = build_model(config, vision_inference_mode=False)
    model.load_state_dict(state)
    probe = make_probe(config)
    probe.load_state_dict(probe_state)
    tok = PromptTokens(out_dir / "tokenizer.json")
    generation_stages(model, tok, cache, probe, recipe, random.Random(seed + parallel.rank()), lambda _: None)


def machine_description() -> dict[str, Any]:
    """The CPU the timings were measured on: stage times differ ~2.5× between machines of the same size
    (measured: the same recipe took 2035 s on one 2-core machine and 792 s on another)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def train_demo(
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    recipe: Recipe | None = None,
    log: Log = print,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the shapes model from ``seed`` and write a checkpoint folder; returns the training report.

    ``quick`` runs :meth:`Recipe.quick` (a few steps per stage); ``threads``: torch threads of this process
    (None: as set; ``mobile-o train-demo`` passes 1, as the shipped model was trained). The report (also
    written as ``training_report.json``) holds per-stage steps, seconds and first/last losses, and the
    machine they were measured on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    recipe = recipe or (Recipe.quick() if quick else Recipe())
    t_start = time.perf_counter()
    cpu_start = time.process_time()
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
    ae_seed = rng.randrange(2**31)
    with AutoencoderJob(model, recipe, ae_seed, log) as autoencoder:
        stages = [pretrain_vision(model, recipe, rng, log)]
        cache = build_cache(model, recipe, rng, log)
        stages.append(train_vqa(model, tok, cache, recipe, rng, log))
        stages.insert(0, autoencoder.result())
    encode_latents(model, cache, log)
    probe = make_probe(model.config)
    stage_seed = rng.randrange(2**31)
    world_args = (copy.deepcopy(model.config), model.state_dict(), probe.state_dict(), out, cache, recipe)
    with parallel.workers(recipe.data_parallel, _generation_stages_worker, (*world_args, stage_seed)):
        if recipe.data_parallel > 1:
            log(f"[c0-d] data-parallel over {recipe.data_parallel} processes (1 torch thread each)")
        stages += generation_stages(model, tok, cache, probe, recipe, random.Random(stage_seed), log)
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
        "main_process_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": machine_description(),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} in {total:.0f} s")
    return report
