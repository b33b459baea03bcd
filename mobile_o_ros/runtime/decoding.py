"""The ``llm`` graph's answer loop: the attention mask, the cache capacity and token-by-token decoding.

One loop serves every answer: :meth:`~mobile_o_ros.runtime.engine.MobileORuntime.ask` and the questions
about a seen frame (:mod:`mobile_o_ros.runtime.frame_context`), so both give the same tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mobile_o_ros import validation
from mobile_o_ros.results import CancelCheck, TokenCallback
from mobile_o_ros.runtime.backend import KVCache
from mobile_o_ros.runtime.sampling import sample_next_token
from mobile_o_ros.runtime.tokenizer import IncrementalDecoder, TextTokenizer

#: KV cache capacities are rounded up to this many positions.
CAPACITY_STEP = 64


def decode_mask(positions: np.ndarray, capacity: int, mask_value: float = -30000.0) -> np.ndarray:
    """Additive mask [1, 1, T, C] for the ``llm`` graph: query at absolute position p sees cache slots ≤ p."""
    visible = np.arange(capacity)[None, :] <= positions[:, None]
    return np.where(visible, 0.0, mask_value).astype(np.float32)[None, None]


def capacity_for(length: int) -> int:
    """The cache capacity for ``length`` positions (prompt plus tokens to generate), in steps of 64."""
    return int(math.ceil(length / CAPACITY_STEP) * CAPACITY_STEP)


def generate_tokens(
    kv: KVCache,
    tokenizer: TextTokenizer,
    embed_table: Any,
    model_info: dict[str, Any],
    eos_id: int,
    embeds: np.ndarray,
    positions: np.ndarray,
    capacity: int,
    request: validation.AskRequest,
    rng: np.random.Generator,
    on_token: TokenCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> tuple[list[int], bool]:
    """Prefill ``embeds`` [T, D] at ``positions`` into ``kv``, then generate up to the request's
    ``max_new_tokens``: (token ids without the end-of-turn token, cancelled)."""
    decoder = IncrementalDecoder(tokenizer)
    ids: list[int] = []
    text = ""
    step_embeds = embeds
    for _ in range(request.max_new_tokens):
        if should_cancel is not None and should_cancel():
            return ids, True
        feeds: dict[str, np.ndarray] = {
            "inputs_embeds": step_embeds[None].astype(np.float32),
            "position_ids": positions[None],
            "attention_mask": decode_mask(positions, capacity, model_info["mask_value"]),
        }
        logits = kv.run(feeds, outputs=("logits",))["logits"]
        token = sample_next_token(logits[0], request.temperature, request.top_p, request.top_k, rng)
        if token == eos_id:
            break
        ids.append(token)
        text += decoder.add(token)
        if on_token is not None:
            on_token(text, len(ids))
        step_embeds = np.asarray(embed_table[token : token + 1], dtype=np.float32)
        positions = np.array([positions[-1] + 1], dtype=np.int64)
    return ids, False
