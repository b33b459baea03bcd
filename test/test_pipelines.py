"""Reference pipelines on the tiny checkpoint: the pipeline contract, outputs of the right kind, bit-exact
under a seed."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from mobile_o_ros import prompts
from mobile_o_ros.reference.pipelines import ReferencePipeline, tokenizer_image_token
from mobile_o_ros.results import AskResult, ImageResult, Pipeline
from mobile_o_ros.runtime.engine import MobileORuntime
from mobile_o_ros.validation import InvalidRequest


@pytest.fixture(scope="module")
def pipe(tiny_loaded) -> ReferencePipeline:
    return ReferencePipeline(tiny_loaded.model, tiny_loaded.tokenizer)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)


@pytest.mark.parametrize("task", ["ask", "generate", "edit"])
def test_reference_and_runtime_share_one_contract(task: str) -> None:
    """Same names, arguments (order and defaults) and result types as :class:`Pipeline`."""
    want = inspect.signature(getattr(Pipeline, task))
    for cls in (ReferencePipeline, MobileORuntime):
        got = inspect.signature(getattr(cls, task))
        assert list(got.parameters.values()) == list(want.parameters.values()), cls
        assert got.return_annotation == want.return_annotation, cls


def test_defaults_come_from_the_config(pipe: ReferencePipeline, tiny_loaded) -> None:
    assert pipe.defaults is tiny_loaded.config.defaults and pipe.defaults.max_new_tokens == 16
    assert pipe.name == "torch" and pipe.latent_shape == (32, 16, 16)
    result = pipe.generate("a red circle", steps=1, seed=0)
    assert (result.steps, result.guidance_scale) == (1, pipe.defaults.guidance_scale)


@pytest.mark.slow
def test_generate_is_512_rgb_and_seeded(pipe: ReferencePipeline) -> None:
    a = pipe.generate("a red circle", steps=3, seed=7)
    b = pipe.generate("a red circle", steps=3, seed=7)
    c = pipe.generate("a red circle", steps=3, seed=8)
    assert isinstance(a, ImageResult) and (a.seed, a.steps, a.cancelled) == (7, 3, False)
    assert a.image.shape == (512, 512, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    noise = pipe.initial_latents(7).numpy()
    assert np.array_equal(pipe.generate("a red circle", steps=3, seed=0, latents=noise).image, a.image)


@pytest.mark.slow
def test_edit_is_512_rgb_and_uses_the_image(pipe: ReferencePipeline, image: np.ndarray) -> None:
    a = pipe.edit(image, "make it green", steps=2, seed=1).image
    b = pipe.edit(image, "make it green", steps=2, seed=1).image
    other = pipe.edit(255 - image, "make it green", steps=2, seed=1).image
    assert a.shape == (512, 512, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, other)


@pytest.mark.slow
def test_answer_is_a_string_and_seeded(pipe: ReferencePipeline, image: np.ndarray) -> None:
    greedy = pipe.ask(image, "what is in the picture?", max_new_tokens=8)
    assert isinstance(greedy, AskResult) and isinstance(greedy.answer, str)
    assert greedy.num_tokens == len(greedy.token_ids) <= 8 and greedy.prompt_tokens > 256
    s1 = pipe.ask(image, "what is in the picture?", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5)
    s2 = pipe.ask(image, "what is in the picture?", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5)
    assert s1.token_ids == s2.token_ids and s1.seed == 5


def test_steps_tokens_and_cancel_are_reported(pipe: ReferencePipeline, image: np.ndarray) -> None:
    steps: list[tuple[int, int]] = []
    pipe.generate("a red circle", steps=3, seed=1, on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    stopped = pipe.edit(
        image,
        "x",
        steps=3,
        seed=1,
        on_step=lambda i, n: steps.append((i, n)),
        should_cancel=lambda: len(steps) >= 4,
    )
    assert stopped.cancelled and stopped.image is None and stopped.seed == 1 and len(steps) == 4
    tokens: list[tuple[str, int]] = []
    full = pipe.ask(image, "what?", max_new_tokens=5, on_token=lambda text, n: tokens.append((text, n)))
    assert [n for _, n in tokens] == list(range(1, full.num_tokens + 1))
    assert tokens[-1][0].strip() == full.answer
    cut = pipe.ask(image, "what?", max_new_tokens=5, should_cancel=lambda: True)
    assert cut.cancelled and cut.num_tokens == 0 and cut.answer == ""


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, img: p.generate("", steps=2), "empty prompt"),
        (lambda p, img: p.generate("x", steps=0), "steps must be >= 1"),
        (lambda p, img: p.edit(img, "x", guidance_scale=float("nan")), "must be finite"),
        (lambda p, img: p.ask(img, "  "), "empty question"),
        (lambda p, img: p.ask(img, "x", temperature=-1), "temperature"),
        (lambda p, img: p.ask(img, "x", top_k=-1), "top_k must be >= 0"),
    ],
)
def test_bad_requests_are_refused_like_the_runtime(
    pipe: ReferencePipeline, image: np.ndarray, call, message
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        call(pipe, image)


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
