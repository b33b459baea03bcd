"""Reference pipelines on the tiny checkpoint: outputs of the right kind, and bit-exact under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobile_o_ros import prompts
from mobile_o_ros.reference.pipelines import ReferencePipeline, tokenizer_image_token


@pytest.fixture(scope="module")
def pipe(tiny_loaded) -> ReferencePipeline:
    return ReferencePipeline(tiny_loaded.model, tiny_loaded.tokenizer)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)


def test_generate_is_512_rgb_and_seeded(pipe: ReferencePipeline) -> None:
    a = pipe.generate("a red circle", steps=3, seed=7)
    b = pipe.generate("a red circle", steps=3, seed=7)
    c = pipe.generate("a red circle", steps=3, seed=8)
    assert a.shape == (512, 512, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_edit_is_512_rgb_and_uses_the_image(pipe: ReferencePipeline, image: np.ndarray) -> None:
    a = pipe.edit(image, "make it green", steps=2, seed=1)
    b = pipe.edit(image, "make it green", steps=2, seed=1)
    other = pipe.edit(255 - image, "make it green", steps=2, seed=1)
    assert a.shape == (512, 512, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, other)


def test_answer_is_a_string_and_seeded(pipe: ReferencePipeline, image: np.ndarray) -> None:
    greedy = pipe.answer(image, "what is in the picture?", max_new_tokens=8)
    assert isinstance(greedy.text, str) and len(greedy.token_ids) <= 8
    s1 = pipe.answer(image, "what is in the picture?", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5)
    s2 = pipe.answer(image, "what is in the picture?", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5)
    assert s1.token_ids == s2.token_ids


def test_image_tokens_are_spliced_at_the_placeholder(pipe: ReferencePipeline, image: np.ndarray) -> None:
    prompt = prompts.vqa_prompt("how many shapes?")
    ids = tokenizer_image_token(prompt, pipe.tokenizer)
    assert ids.count(prompts.IMAGE_TOKEN_INDEX) == 1
    with torch.no_grad():
        embeds = pipe.prompt_embeddings(prompt, image)
    assert embeds.shape[1] == len(ids) - 1 + pipe.config.num_image_tokens
    cut = ids.index(prompts.IMAGE_TOKEN_INDEX)
    with torch.no_grad():
        text_before = pipe.model.embed_tokens(torch.tensor([ids[:cut]]))
    assert torch.equal(embeds[:, :cut], text_before)
