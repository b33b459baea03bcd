"""The training losses of the shapes model (all training-only: none is part of the checkpoint).

- :func:`flow_loss`: SANA's rectified flow on latents, per-pixel weighted;
- the LLM's losses: VQA answer CE and attention loss with each image's prompt prefix computed once
  (:func:`vqa_losses_shared`, :func:`continue_from_prefixes`), questions about captions
  (:func:`caption_qa_loss`), and the dense per-token CE of the vision stage (:func:`dense_loss`);
- the DiT's cross-attention: a tap on its inputs (:func:`cross_attention_tap`), its probabilities
  (:func:`cross_attention_probs`) and the copy loss on them (:func:`copy_attention_loss`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mobile_o_ros import prompts
from mobile_o_ros.reference.model import MobileO
from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.train.data import (
    Cache,
    PromptTokens,
    caption_qa_parts,
    label_heads,
    pad_batch,
    pad_labels,
    token_objects,
    training_questions,
)
from mobile_o_ros.shapes.train.recipe import Recipe


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
    """Rectified-flow MSE: x_t = (1−σ)x0 + σε, target ε − x0, timestep t = 1000σ; with
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


# ------------------------------------------------------------------------------------------- LLM
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


def image_vqa_losses(
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


def image_vqa_loss(
    model: MobileO, tok: PromptTokens, cache: Cache, idx: Sequence[int], rng: random.Random, recipe: Recipe
) -> torch.Tensor:
    """The VQA loss of (b2) (answer CE + ``vqa_attention_weight`` × attention loss, chat format) on questions
    about the cached source images ``idx``; 0 for none."""
    if not idx:
        return torch.zeros(())
    ce, attention = image_vqa_losses(model, tok, cache, idx, rng, recipe)
    return ce + recipe.vqa_attention_weight * attention


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


# ------------------------------------------------------------------------------------------- vision
def balanced_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the object tokens (label > 0) plus mean CE over the background tokens: with a plain
    mean the ~85% background tokens dominate."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    obj = labels > 0
    loss = ce[~obj].mean() if bool((~obj).any()) else ce.sum() * 0
    return loss + ce[obj].mean() if bool(obj.any()) else loss


def dense_loss(logits: torch.Tensor, labels: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE of the :func:`token_labels` heads (logits [B, N, sum(heads)], labels [B, N, 7]) and, per
    object token, whether all four object attributes are right. The object attributes (first four
    columns) use :func:`balanced_ce`."""
    loss = logits.new_zeros(())
    right = []
    off = 0
    obj = labels[..., 0] > 0
    for j, n in enumerate(label_heads(grid)):
        lo = logits[..., off : off + n]
        off += n
        if j < 4:
            loss = loss + balanced_ce(lo.flatten(0, 1), labels[..., j].flatten())
            right.append((lo.argmax(-1) == labels[..., j])[obj])
        else:
            loss = loss + F.cross_entropy(lo.flatten(0, 1), labels[..., j].flatten())
    return loss, torch.stack(right).all(0)


# --------------------------------------------------------------------------------- DiT cross-attention
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
