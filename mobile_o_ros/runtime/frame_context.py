"""A frame seen once: every question about one picture shares its vision pass and the prompt's prefix.

The VQA prompt is ``<system and user header> <image tokens> \\n<question><end of turn><assistant header>``.
:func:`make_frame` runs the vision graph and prefills the ``llm`` graph's KV cache with everything before
the question (the chat header and the image tokens), once. :func:`ask_about` starts each question from a
copy of that cache and prefills only the question's own tokens, then decodes with the loop of
:meth:`~mobile_o_ros.runtime.engine.MobileORuntime.ask`
(:func:`~mobile_o_ros.runtime.decoding.generate_tokens`), so a greedy answer is the independent ``ask``'s.
:func:`edit_frame` reuses the vision tokens for an edit.

The question's tokens never merge with the prefix's: the prompt is tokenized in chunks around the image
placeholder (LLaVA's ``tokenizer_image_token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mobile_o_ros import prompts, validation
from mobile_o_ros.results import AskResult, CancelCheck, ImageResult, StepCallback, TokenCallback
from mobile_o_ros.runtime.decoding import capacity_for, decode_mask, generate_tokens
from mobile_o_ros.runtime.sampling import make_rng
from mobile_o_ros.runtime.tokenizer import IMAGE_TOKEN_INDEX

#: The runtime these functions work on: a :class:`~mobile_o_ros.runtime.engine.MobileORuntime` (typed
#: loosely because the engine imports this module for its ``frame``/``ask_about``/``edit_frame`` methods).
Runtime = Any


@dataclass(frozen=True)
class FrameContext:
    """One picture, seen: its vision tokens and the KV cache of the VQA prompt up to the question."""

    #: Projected image tokens [N, D].
    image_embeds: np.ndarray
    #: Token ids of the prompt before the question, the image placeholder (-200) last.
    prefix_ids: tuple[int, ...]
    #: Positions the prefix fills (its text tokens plus the N image tokens).
    prefix_len: int
    #: The ``llm`` cache after the prefix, [layers, 2, 1, kv_heads, prefix_len, head_dim] fp32 (host).
    prefix_cache: np.ndarray


def _split(rt: Runtime, question: str) -> tuple[list[int], list[int]]:
    """(prefix ids through the image placeholder, the question's ids) of the VQA prompt."""
    ids = rt.tokenizer.split_image_prompt(prompts.vqa_prompt(question))
    cut = ids.index(IMAGE_TOKEN_INDEX) + 1
    return ids[:cut], ids[cut:]


def make_frame(rt: Runtime, rgb: np.ndarray) -> FrameContext:
    """Encode a picture and prefill the prompt before the question: the work every question shares."""
    return frame_of_tokens(rt, rt.encode_image(rgb))


def frame_of_tokens(rt: Runtime, image_embeds: np.ndarray) -> FrameContext:
    """Prefill the prompt before the question around a picture's vision tokens (one ``llm`` call): the second
    half of :func:`make_frame`, for a caller that ran the vision pass on its own."""
    prefix_ids, _ = _split(rt, "?")
    embeds = rt.tokenizer.splice_image_embeddings(prefix_ids, rt.embed_table, image_embeds).astype(np.float32)
    n = len(embeds)
    positions = np.arange(n, dtype=np.int64)
    with rt.backend.kv_cache("llm", rt.kv_shape(n)) as kv:
        kv.run(
            {
                "inputs_embeds": embeds[None],
                "position_ids": positions[None],
                "attention_mask": decode_mask(positions, n, rt.model_info["mask_value"]),
            },
            outputs=(),
        )
        cache = kv.read()
    return FrameContext(image_embeds, tuple(prefix_ids), n, cache)


def ask_about(
    rt: Runtime,
    frame: FrameContext,
    question: str,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    on_token: TokenCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> AskResult:
    """Answer a question about a seen frame: the question's tokens only are prefilled, after the frame's
    cached prefix. Takes and returns what :meth:`MobileORuntime.ask` does."""
    request = validation.check_ask(question, max_new_tokens, temperature, top_p, top_k, seed, rt.defaults)
    n_new = request.max_new_tokens
    rng, used_seed = make_rng(request.seed)
    prefix_ids, question_ids = _split(rt, request.question)
    if tuple(prefix_ids) != frame.prefix_ids:
        raise validation.InvalidRequest("the frame was seen by another model's tokenizer")
    length = frame.prefix_len + len(question_ids)
    if length + n_new > rt.context_length:
        raise validation.InvalidRequest(
            f"prompt too long: {length} tokens (+{n_new} to generate) exceeds the context of "
            f"{rt.context_length}"
        )
    capacity = capacity_for(length + n_new)
    cache = np.zeros(rt.kv_shape(capacity), np.float32)
    cache[..., : frame.prefix_len, :] = frame.prefix_cache
    embeds = np.asarray(rt.embed_table[np.asarray(question_ids, dtype=np.int64)], dtype=np.float32)
    positions = np.arange(frame.prefix_len, length, dtype=np.int64)
    with rt.backend.kv_cache("llm", rt.kv_shape(capacity)) as kv:
        kv.load(cache)
        ids, cancelled = generate_tokens(
            kv,
            rt.tokenizer,
            rt.embed_table,
            rt.model_info,
            rt.eos_id,
            embeds,
            positions,
            capacity,
            request,
            rng,
            on_token,
            should_cancel,
        )
    answer = rt.tokenizer.decode(ids, skip_special_tokens=True).strip()
    return AskResult(answer, len(ids), used_seed, ids, cancelled, prompt_tokens=length)


def edit_frame(
    rt: Runtime,
    frame: FrameContext,
    instruction: str,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> ImageResult:
    """Edit a seen frame (its vision tokens reused): takes and returns what :meth:`MobileORuntime.edit`
    does."""
    request = validation.check_image_request(
        instruction, "instruction", steps, guidance_scale, seed, rt.defaults
    )
    ids = rt.tokenizer.split_image_prompt(prompts.edit_prompt(request.text))
    if len(ids) - 1 + len(frame.image_embeds) > rt.context_length:
        raise validation.InvalidRequest(f"prompt too long: exceeds the context of {rt.context_length}")
    embeds = rt.tokenizer.splice_image_embeddings(ids, rt.embed_table, frame.image_embeds).astype(np.float32)
    _, used_seed = make_rng(request.seed)
    noise = rt.initial_latents(used_seed)
    cond = rt.conditioning(embeds)
    out = rt.denoise(cond, noise, request.steps, request.guidance_scale, on_step, should_cancel)
    if out is None:
        return ImageResult(None, used_seed, request.steps, cancelled=True, prompt_tokens=len(embeds))
    return ImageResult(
        rt.decode(out),
        used_seed,
        request.steps,
        prompt_tokens=len(embeds),
        guidance_scale=request.guidance_scale,
    )
