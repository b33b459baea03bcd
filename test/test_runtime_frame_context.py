"""A frame seen once: questions about it share the vision pass and the prefix's KV cache, and answer exactly
as independent ``ask`` calls do."""

from __future__ import annotations

import random

import numpy as np
import pytest
from annotate_support import embedded_export

from mobile_o_ros.runtime.backend import BackendError
from mobile_o_ros.runtime.engine import MobileORuntime
from mobile_o_ros.shapes import world
from mobile_o_ros.validation import InvalidRequest

pytestmark = pytest.mark.runtime

QUESTIONS = (
    "What is in the image?",
    "is there a red circle?",
    "how many shapes are there?",
    "Describe the scene in detail, please.",
    "what colour is the background?",
)


def _pictures(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = [world.render(world.make_scene(world.HELDOUT_SEED_BASE + 11 + i), size) for i in range(n)]
    out.append(rng.integers(0, 256, (size // 2, size, 3), dtype=np.uint8))  # not square, noise
    return out


class CountingBackend:
    """Wraps a backend and counts graph calls (and the tokens each ``llm`` call prefills)."""

    def __init__(self, backend) -> None:
        self.inner, self.calls, self.llm_tokens = backend, {}, []
        self.name = backend.name

    def run(self, graph, feeds):
        self.calls[graph] = self.calls.get(graph, 0) + 1
        if graph == "llm":
            self.llm_tokens.append(feeds["inputs_embeds"].shape[1])
        return self.inner.run(graph, feeds)

    def kv_cache(self, graph, shape):
        from mobile_o_ros.runtime.backend import KVCache

        return KVCache(self, graph, shape)

    def close(self) -> None:
        self.inner.close()


def test_answers_equal_independent_asks_on_the_tiny_model(tiny_runtime: MobileORuntime) -> None:
    for picture in _pictures(2, 96):
        frame = tiny_runtime.frame(picture)
        for question in QUESTIONS:
            ours = tiny_runtime.ask_about(frame, question, max_new_tokens=12)
            ref = tiny_runtime.ask(picture, question, max_new_tokens=12)
            assert ours.token_ids == ref.token_ids and ours.answer == ref.answer
            assert ours.prompt_tokens == ref.prompt_tokens and ours.num_tokens == ref.num_tokens
        sampled = tiny_runtime.ask_about(frame, QUESTIONS[0], max_new_tokens=12, temperature=0.8, seed=4)
        assert sampled.token_ids == tiny_runtime.ask(picture, QUESTIONS[0], 12, 0.8, seed=4).token_ids


def test_the_frame_is_seen_once(tiny_export) -> None:
    """One vision call per frame, and each question prefills only its own tokens after the prefix."""
    rt = MobileORuntime.load(tiny_export)
    rt.backend = counting = CountingBackend(rt.backend)
    picture = _pictures(1, 64)[0]
    frame = rt.frame(picture)
    assert counting.calls == {"vision": 1, "llm": 1} and counting.llm_tokens == [frame.prefix_len]
    for question in QUESTIONS:
        counting.llm_tokens.clear()
        result = rt.ask_about(frame, question, max_new_tokens=5)
        assert counting.llm_tokens[0] == result.prompt_tokens - frame.prefix_len < 20
    assert counting.calls["vision"] == 1
    counting.llm_tokens.clear()
    rt.ask(picture, QUESTIONS[0], max_new_tokens=5)
    assert counting.calls["vision"] == 2 and counting.llm_tokens[0] > frame.prefix_len


def test_streaming_cancel_and_bad_questions(tiny_runtime: MobileORuntime) -> None:
    frame = tiny_runtime.frame(_pictures(1, 64)[0])
    seen: list[tuple[str, int]] = []
    result = tiny_runtime.ask_about(
        frame, QUESTIONS[0], max_new_tokens=6, on_token=lambda t, n: seen.append((t, n))
    )
    assert [n for _, n in seen] == list(range(1, result.num_tokens + 1))
    stopped = tiny_runtime.ask_about(frame, QUESTIONS[0], max_new_tokens=6, should_cancel=lambda: True)
    assert stopped.cancelled and stopped.num_tokens == 0
    with pytest.raises(InvalidRequest, match="empty question"):
        tiny_runtime.ask_about(frame, "  ")
    with pytest.raises(InvalidRequest, match="prompt too long"):
        tiny_runtime.ask_about(frame, "word " * 5000)


def test_an_edit_of_a_seen_frame_equals_edit(tiny_runtime: MobileORuntime) -> None:
    picture = _pictures(1, 64)[0]
    frame = tiny_runtime.frame(picture)
    ours = tiny_runtime.edit_frame(frame, "make it blue", steps=2, seed=5)
    ref = tiny_runtime.edit(picture, "make it blue", steps=2, seed=5)
    assert ours.seed == ref.seed == 5 and ours.steps == 2
    np.testing.assert_array_equal(ours.image, ref.image)


def test_the_host_cache_reads_and_loads(tiny_runtime: MobileORuntime) -> None:
    shape = tiny_runtime.kv_shape(64)
    with tiny_runtime.backend.kv_cache("llm", shape) as kv:
        values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        kv.load(values)
        np.testing.assert_array_equal(kv.read(), values)
        with pytest.raises(BackendError, match="KV cache of 'llm' is"):
            kv.load(values[..., :32, :])


def test_answers_equal_independent_asks_on_the_embedded_model() -> None:
    """The shapes model: every world question of 12 held-out scenes, the same tokens both ways."""
    rt = MobileORuntime.load(embedded_export())
    rng = random.Random(0)
    compared = 0
    for i in range(12):
        scene = world.make_scene(world.HELDOUT_SEED_BASE + 500 + i)
        picture = world.render(scene, 256)
        frame = rt.frame(picture)
        for q in [*world.questions(scene, rng), world.Question("caption", "describe the image.", "")]:
            ours, ref = rt.ask_about(frame, q.question), rt.ask(picture, q.question)
            assert ours.token_ids == ref.token_ids, q.question
            compared += 1
    assert compared >= 60
