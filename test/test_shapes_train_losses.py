"""Training losses (shapes/train/losses.py): each equals its plain, unshared computation."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from shapes_train_support import untrained_shapes_model

from mobile_o_ros import prompts
from mobile_o_ros.model_config import preset
from mobile_o_ros.reference.checkpoint import build_model
from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.train.data import (
    caption_qa_parts,
    join_conditioning,
    latent_object_mask,
    pad_batch,
    pad_labels,
    splice,
    token_objects,
    training_questions,
)
from mobile_o_ros.shapes.train.losses import (
    caption_qa_loss,
    copy_attention_loss,
    cross_attention_probs,
    cross_attention_tap,
    eager_attention,
    flow_loss,
    vqa_loss_shared,
    vqa_losses_shared,
)


def _full_sequence_loss(model: Any, seqs: list[Any], labels: list[Any]) -> Any:
    """The reference the shared-prefix losses must equal: mean next-token CE over the labelled tokens of
    whole sequences, right-padded into one batch."""
    embeds, mask = pad_batch(seqs)
    lab = pad_labels(labels, mask)
    return model.llm(inputs_embeds=embeds, attention_mask=mask, labels=lab, use_cache=False).loss


def _vqa_sequences(model: Any, tok: Any, image_embeds: Any, qas: list[world.Question]) -> tuple[list, list]:
    """Whole (prompt with the image spliced, answer) sequences and their labels (−100 but the answer)."""
    seqs, labels = [], []
    for q in qas:
        ids = tok.image_prompt(prompts.vqa_prompt(q.question))
        answer = [*tok.encode(q.answer), tok.eos]
        e = splice(model, ids, image_embeds)
        a = model.embed_tokens(torch.tensor(answer)[None])[0]
        seqs.append(torch.cat([e, a], dim=0))
        labels.append(torch.cat([torch.full((e.shape[0],), -100), torch.tensor(answer)]))
    return seqs, labels


def test_shared_prefix_vqa_loss_equals_full_sequences(tmp_path: Path) -> None:
    """Training's prefix-sharing VQA loss is the plain loss over full (image, question, answer) sequences."""
    tok, model = untrained_shapes_model(tmp_path)
    rng = random.Random(0)
    qsets = [world.questions(world.make_scene(i), rng)[:3] for i in range(2)]
    img = 0.5 * torch.randn(2, 256, model.config.hidden_size)
    seqs, labels = [], []
    for k in range(2):
        a, b = _vqa_sequences(model, tok, img[k], qsets[k])
        seqs += a
        labels += b
    with torch.no_grad():
        full = _full_sequence_loss(model, seqs, labels)
        shared = vqa_loss_shared(model, tok, img, qsets)
    assert torch.allclose(full, shared, atol=1e-5)


@pytest.mark.parametrize("short", [False, True])
def test_caption_qa_loss_equals_full_sequences(tmp_path: Path, short: bool) -> None:
    """The caption-QA loss, each caption computed once (prefixes of different lengths, padded), is the
    plain loss over whole (caption, question, answer) sequences; the parts tokenize as the whole does."""
    tok, model = untrained_shapes_model(tmp_path)
    scenes = [world.make_scene(i) for i in (1, 5, 9)]
    seqs, labels, lengths = [], [], set()
    rng = random.Random(7)
    for scene in scenes:
        cap = world.caption(scene, rng)
        for q in training_questions(scene, rng):
            head, turn = caption_qa_parts(cap, q.question, short)
            prompt = tok.encode(head + turn)
            assert prompt == tok.encode(head) + tok.encode(turn)
            lengths.add(len(tok.encode(head)))
            answer = [*tok.encode(q.answer), tok.eos]
            seqs.append(model.embed_tokens(torch.tensor(prompt + answer)[None])[0])
            labels.append(torch.tensor([-100] * len(prompt) + answer))
    assert len(lengths) > 1  # the prefixes really are padded
    with torch.no_grad():
        full = _full_sequence_loss(model, seqs, labels)
        shared = caption_qa_loss(model, tok, scenes, random.Random(7), short)
    assert torch.allclose(full, shared, atol=1e-5)


def test_vqa_attention_loss_matches_the_full_sequences(tmp_path: Path) -> None:
    """The attention loss of the shared-prefix VQA batch is −log of the heads' mean attention mass, from the
    token before the answer, on the asked-about objects' image tokens, as a plain forward of each whole
    sequence computes it; the answer CE is the same with or without it."""
    tok, model = untrained_shapes_model(tmp_path)
    rng = random.Random(0)
    scenes = [world.make_scene(i) for i in (3, 4)]
    qsets = [world.questions(s, rng) for s in scenes]
    grid = round(model.config.num_image_tokens**0.5)
    objects = [token_objects(s, grid) for s in scenes]
    img = 0.5 * torch.randn(2, model.config.num_image_tokens, model.config.hidden_size)
    with torch.no_grad():
        ce, att = vqa_losses_shared(model, tok, img, qsets, prompts.vqa_prompt, objects, (2,))
        plain = vqa_loss_shared(model, tok, img, qsets)
        terms = []
        for k in range(2):
            for q in qsets[k]:
                if not q.objects:
                    continue
                ids = tok.image_prompt(prompts.vqa_prompt(q.question))
                cut = ids.index(prompts.IMAGE_TOKEN_INDEX)
                e = splice(model, ids, img[k])
                with eager_attention(model):
                    probs = model.llm(inputs_embeds=e[None], output_attentions=True).attentions[2][0].mean(0)
                keys = cut + np.flatnonzero(np.isin(objects[k], [i + 1 for i in q.objects]))
                terms.append(-torch.log(probs[-1, keys].sum() + 1e-6))
    assert model.llm.config._attn_implementation == "sdpa"
    assert terms and torch.allclose(att, torch.stack(terms).mean(), atol=1e-4)
    assert torch.allclose(ce, plain, atol=1e-5)


def test_question_weights_equal_repeated_questions(tmp_path: Path) -> None:
    """Weighting a category's questions by k in the VQA losses gives the answer CE and the attention loss
    that k copies of each of those questions give (without running the copies through the LLM)."""
    tok, model = untrained_shapes_model(tmp_path)
    rng = random.Random(0)
    scenes = [world.make_scene(i) for i in (3, 4)]
    qsets = [training_questions(s, rng) for s in scenes]
    repeated = [
        qs + [q for q in qs if q.category == "position"] * 2 + [q for q in qs if q.category == "shape"]
        for qs in qsets
    ]
    assert sum(len(r) for r in repeated) > sum(len(q) for q in qsets)
    grid = round(model.config.num_image_tokens**0.5)
    objects = [token_objects(s, grid) for s in scenes]
    img = 0.5 * torch.randn(2, model.config.num_image_tokens, model.config.hidden_size)
    weights = (("position", 3.0), ("shape", 2.0))
    with torch.no_grad():
        ce_w, att_w = vqa_losses_shared(model, tok, img, qsets, prompts.vqa_prompt, objects, (2,), weights)
        ce_r, att_r = vqa_losses_shared(model, tok, img, repeated, prompts.vqa_prompt, objects, (2,))
        ce_1, _ = vqa_losses_shared(model, tok, img, qsets, prompts.vqa_prompt, objects, (2,))
    assert torch.allclose(ce_w, ce_r, atol=1e-5) and torch.allclose(att_w, att_r, atol=1e-5)
    assert not torch.allclose(ce_w, ce_1, atol=1e-4)


def test_flow_loss_weights_latent_pixels_on_and_next_to_objects() -> None:
    scene = world.Scene("white", (world.Shape("square", "red", "left", "large"),))
    mask = latent_object_mask(scene, 16, 128)[0]
    on = world.render_labels(scene, 128).reshape(16, 8, 16, 8).any(axis=(1, 3))
    assert mask.shape == (16, 16) and bool(mask[torch.from_numpy(on)].all())
    assert int(mask.sum()) > int(on.sum())  # one latent pixel around the outline too
    assert mask[0, 15] == 0 and mask[8, 15] == 0  # far from the square
    torch.manual_seed(0)
    model = build_model(preset("shapes", vocab_size=1006)).eval()
    x = torch.randn(2, *model.config.latent_shape)
    cond = torch.randn(2, 4, int(model.config.dit["caption_channels"]))
    cmask = torch.ones(2, 4, dtype=torch.long)
    weight = torch.ones(2, 1, 16, 16)
    weight[:, :, :8] = 0.0  # only the lower half counts
    with torch.no_grad():
        half = flow_loss(model, x, cond, cmask, torch.Generator().manual_seed(1), 3.0, weight=weight)
        gen = torch.Generator().manual_seed(1)
        b = x.shape[0]
        u = torch.rand((b,), generator=gen).clamp_min(1e-3)
        t = 1000.0 * 3.0 * u / (1 + 2.0 * u)
        sigma = (t / 1000.0).view(b, 1, 1, 1)
        eps = torch.randn(x.shape, generator=gen)
        v = model.dit(
            hidden_states=(1 - sigma) * x + sigma * eps,
            encoder_hidden_states=cond,
            timestep=t,
            encoder_attention_mask=cmask,
            return_dict=False,
        )[0]
    want = (v - (eps - x)).pow(2)[:, :, 8:].mean()
    assert torch.allclose(half, want, atol=1e-6)


def test_cross_attention_probs_are_what_the_dit_attends_with() -> None:
    """The written-out cross-attention probabilities, times the values, give what SANA's processor gives
    (masked tokens get none); a tap records the layer's inputs only while open."""
    torch.manual_seed(0)
    model = build_model(preset("shapes", vocab_size=1006)).eval()
    width = int(model.config.dit["caption_channels"])
    cond, mask = join_conditioning(
        [
            (torch.randn(2, 5, width), torch.ones(2, 5, dtype=torch.long)),
            (torch.randn(1, 9, width), torch.ones(1, 9, dtype=torch.long)),
        ]
    )
    x, t = torch.randn(3, *model.config.latent_shape), torch.full((3,), 400.0)
    outputs = []
    attn2 = model.dit.transformer_blocks[1].attn2
    handle = attn2.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with torch.no_grad(), cross_attention_tap(model, [1, 2]) as seen:
        model.dit(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask)
    handle.remove()
    assert sorted(seen) == [1, 2] and seen[2][0] is model.dit.transformer_blocks[2].attn2
    module, hidden, kv, bias = seen[1]
    with torch.no_grad():
        probs = cross_attention_probs(module, hidden, kv, bias)
        v = module.to_v(kv)
        v = v.view(3, -1, module.heads, v.shape[-1] // module.heads).transpose(1, 2)
        mixed = (probs @ v).transpose(1, 2).reshape(3, probs.shape[2], -1)
        out = module.to_out[1](module.to_out[0](mixed))
    assert probs.shape == (3, module.heads, 64, 9)
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5) and float(probs[:2, ..., 5:].max()) < 1e-3
    assert torch.allclose(out, outputs[0], atol=1e-5)
    with torch.no_grad():
        model.dit(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask)
    assert seen[1][1] is hidden  # the tap is closed: nothing recorded after the block


def test_copy_loss_asks_head_0_to_attend_where_the_copy_map_says() -> None:
    """~0 when head 0 attends from each cell to its copy sources, log L when uniform; cells without a
    source and the other heads are free; a cell with several sources may split its attention among them."""
    e, heads, n, length, start = 2, 4, 64, 80, 7
    sources = torch.zeros(e, n, n, dtype=torch.bool)
    sources[:, torch.arange(40), torch.arange(40)] = True  # cells 40.. ask nothing
    sources[:, 5, :] = False
    sources[:, 5, 60:64] = True  # cell 5: any of four tokens
    copy = torch.full((e, heads, n, length), 1e-9)
    copy[:, 0, torch.arange(n), start + torch.arange(n)] = 1.0
    copy[:, 0, 5] = 1e-9
    copy[:, 0, 5, start + 60 : start + 64] = 0.25
    uniform = torch.full((e, heads, n, length), 1.0 / length)
    assert float(copy_attention_loss(copy, [start] * e, sources)) < 1e-4
    expected = (39 * np.log(length) + np.log(length / 4)) / 40
    assert float(copy_attention_loss(uniform, [start] * e, sources)) == pytest.approx(expected, rel=1e-4)
    free = copy.clone()
    free[:, 1:] = uniform[:, 1:]
    free[:, 0, 40:] = 1.0 / length
    assert float(copy_attention_loss(free, [start] * e, sources)) < 1e-4
