"""Warm frames without DDS: a camera's newest frame seen while the worker is idle answers every question as
a cold ``ask`` does, a request stops the warming within one graph call, and the diagnostics values.

The worker is the node's own (:class:`~mobile_o_ros.ros.worker.Worker`), the model the tiny export (and the
embedded shapes model where it is trained); frames enter :class:`~mobile_o_ros.ros.frames.Cameras` through its
subscription callback.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 messages not importable (source scripts/env.sh)")

from sensor_msgs.msg import CompressedImage  # noqa: E402

from mobile_o_ros.ros import images, params  # noqa: E402
from mobile_o_ros.ros.frames import Cameras  # noqa: E402
from mobile_o_ros.ros.state import NodeState  # noqa: E402
from mobile_o_ros.ros.warm import WarmFrames  # noqa: E402
from mobile_o_ros.ros.worker import Worker  # noqa: E402
from mobile_o_ros.runtime.backend import KVCache  # noqa: E402
from mobile_o_ros.runtime.engine import MobileORuntime  # noqa: E402
from mobile_o_ros.shapes import world  # noqa: E402

FRONT, REAR = "/front/image_raw", "/rear/image_raw"
QUESTIONS = (
    "What is in the image?",
    "is there a red circle?",
    "how many shapes are there?",
    "what colour is the background?",
)
#: Long enough for any answer of these questions to end by itself or at this cap, on both models.
TOKENS = 12


class LoggingBackend:
    """The runtime's backend, unchanged, with every graph call written to ``log`` in order; ``after_vision``
    (when set) runs once after the next vision call."""

    def __init__(self, backend, log: list[str]) -> None:
        self.inner, self.log, self.name = backend, log, backend.name
        self.after_vision = None

    def run(self, graph, feeds):
        out = self.inner.run(graph, feeds)
        self.log.append(f"{graph}:{feeds['inputs_embeds'].shape[1]}" if graph == "llm" else graph)
        if graph == "vision" and self.after_vision is not None:
            hook, self.after_vision = self.after_vision, None
            hook()
        return out

    def kv_cache(self, graph, shape):
        return KVCache(self, graph, shape)

    def close(self) -> None:
        self.inner.close()


def _settings(**values) -> params.Settings:
    cfg = {p.name: p.default for p in params.PARAMETERS}
    cfg.update(camera_topics=[FRONT, REAR], **values)
    return params.Settings(cfg)


@pytest.fixture
def worker():
    w = Worker(policy="queue", max_queue=4)
    w.start()
    yield w
    assert w.stop(timeout=30.0)


def _parts(model, worker: Worker, **values) -> tuple[NodeState, Cameras, WarmFrames]:
    state = NodeState(cfg=_settings(**values), name="/warm_test", model=model, active=True)
    cameras = Cameras(None, state, None)
    return state, cameras, WarmFrames(None, state, worker, cameras)


def _picture(seed: int, size: int = 96) -> np.ndarray:
    return world.render(world.make_scene(world.HELDOUT_SEED_BASE + 40 + seed), size)


def _publish(cameras: Cameras, camera: str, rgb: np.ndarray):
    """A frame arriving on ``camera`` (the subscription's callback); returns the kept frame."""
    cameras._on_frame(camera, images.rgb_to_image(rgb))
    return cameras.frames()[camera]


def _warm_now(warm: WarmFrames, worker: Worker, model) -> int:
    todo = warm.pending(warm._cameras.frames())
    job = worker.submit("warm", lambda cancel: warm.warm(model, todo, cancel), background=True)
    return job.result(timeout=120)


def _warm_against_cold(rt: MobileORuntime, pictures: list[np.ndarray]) -> None:
    """Every question about every picture: the warm frame's answer (token ids, text, counts) is the cold
    ``ask``'s, and so is the answer of a question that finds the frame cold."""
    worker = Worker()
    worker.start()
    try:
        _, cameras, warm = _parts(rt, worker)
        for picture in pictures:
            frame = _publish(cameras, FRONT, picture)
            cold_first = worker.submit(
                "ask",
                lambda _c, f=frame, p=picture: warm.ask(rt, FRONT, f, p, QUESTIONS[0], max_new_tokens=TOKENS),
            ).result(timeout=120)
            assert cold_first[1] is False and warm.is_warm(FRONT, frame)  # seen, and kept warm
            assert cold_first[0].token_ids == rt.ask(picture, QUESTIONS[0], max_new_tokens=TOKENS).token_ids
            for question in QUESTIONS:
                ours, was_warm = worker.submit(
                    "ask",
                    lambda _c, f=frame, q=question: warm.ask(rt, FRONT, f, None, q, max_new_tokens=TOKENS),
                ).result(timeout=120)
                ref = rt.ask(picture, question, max_new_tokens=TOKENS)
                assert was_warm
                assert ours.token_ids == ref.token_ids and ours.answer == ref.answer, question
                assert (ours.num_tokens, ours.prompt_tokens) == (ref.num_tokens, ref.prompt_tokens)
    finally:
        worker.stop(timeout=30.0)


def test_warm_answers_equal_cold_ones_on_the_tiny_model(tiny_runtime: MobileORuntime) -> None:
    noise = np.random.default_rng(5).integers(0, 256, (48, 96, 3), dtype=np.uint8)  # not square
    _warm_against_cold(tiny_runtime, [_picture(0), noise])


def test_warm_answers_equal_cold_ones_on_the_embedded_model() -> None:
    from annotate_support import embedded_export

    rt = MobileORuntime.load(embedded_export())
    try:
        _warm_against_cold(rt, [_picture(i, rt.image_size) for i in range(3)])
    finally:
        rt.close()


def test_a_warm_question_prefills_only_its_own_tokens(tiny_export, worker) -> None:
    log: list[str] = []
    rt = MobileORuntime.load(tiny_export)
    rt.backend = LoggingBackend(rt.backend, log)
    _, cameras, warm = _parts(rt, worker)
    frame = _publish(cameras, FRONT, _picture(1))
    assert _warm_now(warm, worker, rt) == 1
    prefix = warm.entry(FRONT).context.prefix_len
    assert log == ["vision", f"llm:{prefix}"]
    log.clear()
    out, was_warm = worker.submit(
        "ask", lambda _c: warm.ask(rt, FRONT, frame, None, QUESTIONS[1], max_new_tokens=1)
    ).result(timeout=60)
    assert was_warm and warm.counts.hits == 1
    assert log == [f"llm:{out.prompt_tokens - prefix}"] and out.prompt_tokens - prefix < 20
    assert _warm_now(warm, worker, rt) == 0 and log == [f"llm:{out.prompt_tokens - prefix}"]  # nothing new


def test_a_frame_seen_through_context_of_stays_warm(tiny_export, worker) -> None:
    """The continuous question and the live annotation take their frame through ``context_of``: the first
    use sees it (vision pass and prefix), keeps it warm, and the next use calls no graph."""
    log: list[str] = []
    rt = MobileORuntime.load(tiny_export)
    rt.backend = LoggingBackend(rt.backend, log)
    _, cameras, warm = _parts(rt, worker)
    frame = _publish(cameras, FRONT, _picture(2))
    context, was_warm = worker.submit("seen", lambda _c: warm.context_of(rt, FRONT, frame, None)).result(60)
    assert not was_warm and warm.is_warm(FRONT, frame) and warm.counts.hits == 0
    assert log == ["vision", f"llm:{context.prefix_len}"]
    log.clear()
    again, was_warm = worker.submit("seen", lambda _c: warm.context_of(rt, FRONT, frame, None)).result(60)
    assert was_warm and again is context and log == [] and warm.counts.hits == 1
    assert _warm_now(warm, worker, rt) == 0 and log == []  # nothing left for the timer


def test_with_warming_off_context_of_sees_the_frame_and_keeps_nothing(tiny_export, worker) -> None:
    log: list[str] = []
    rt = MobileORuntime.load(tiny_export)
    rt.backend = LoggingBackend(rt.backend, log)
    _, cameras, warm = _parts(rt, worker, warm_rate_hz=0.0)
    frame = _publish(cameras, FRONT, _picture(3))
    for _ in range(2):
        log.clear()
        context, was_warm = worker.submit("seen", lambda _c: warm.context_of(rt, FRONT, frame, None)).result(
            60
        )
        assert not was_warm and log == ["vision", f"llm:{context.prefix_len}"]
    assert warm.entry(FRONT) is None and warm.counts.hits == 0


def test_a_request_preempts_warming_within_one_graph_call(tiny_export, worker) -> None:
    """A request accepted during the warming's vision call runs before the warming's next graph call (the
    prefix prefill); the next warming picks up from the vision tokens it kept."""
    log: list[str] = []
    rt = MobileORuntime.load(tiny_export)
    rt.backend = backend = LoggingBackend(rt.backend, log)
    state, cameras, warm = _parts(rt, worker)
    frame = _publish(cameras, FRONT, _picture(2))
    _publish(cameras, REAR, _picture(3))
    request_done = threading.Event()

    def request(_cancel) -> str:
        log.append("request")
        request_done.set()
        return "answered"

    submitted = []
    backend.after_vision = lambda: submitted.append(worker.submit("ask", request))
    warm.tick()  # what the timer does: one background job for both cameras
    assert request_done.wait(60.0), log
    assert submitted[0].result(timeout=60) == "answered"
    assert log == ["vision", "request"]  # no graph call of the warming after the request came
    assert warm.counts.preempted == 1 and warm.counts.encoded == 0
    values = warm.values(cameras.frames())
    assert (values[f"warm.{FRONT}"], values[f"warm.{REAR}"]) == ("vision", "none")

    log.clear()
    warm.tick()  # idle again: the prefix of the front frame, then the rear frame
    assert warm._job is not None and warm._job.result(timeout=120) == 2
    assert [entry.split(":")[0] for entry in log] == ["llm", "vision", "llm"]
    assert warm.counts.encoded == 2 and warm.is_warm(FRONT, frame)
    values = warm.values(cameras.frames())
    assert (values[f"warm.{FRONT}"], values[f"warm.{REAR}"]) == ("warm", "warm")
    assert state.active


def test_warming_waits_for_an_idle_worker(tiny_runtime, worker) -> None:
    """A tick while a request runs submits nothing; the next one, once idle, warms."""
    gate = threading.Event()
    _, cameras, warm = _parts(tiny_runtime, worker)
    _publish(cameras, FRONT, _picture(4))
    blocker = worker.submit("ask", lambda _c: gate.wait(60))
    warm.tick()  # the worker is busy: nothing is submitted
    assert warm._job is None
    gate.set()
    blocker.result(timeout=60)
    assert _warm_now(warm, worker, tiny_runtime) == 1


def test_diagnostics_values_follow_the_frames(tiny_runtime, worker) -> None:
    state, cameras, warm = _parts(tiny_runtime, worker)
    values = warm.values(cameras.frames())
    assert values["warm_rate_hz"] == "1" and values[f"warm.{FRONT}"] == "none"
    assert values[f"warm_frame_age_s.{FRONT}"] == "" and values["warm_encoded"] == "0"
    first = _publish(cameras, FRONT, _picture(5))
    _warm_now(warm, worker, tiny_runtime)
    values = warm.values(cameras.frames(), now=first.received + 2.5)
    assert values[f"warm.{FRONT}"] == "warm" and values[f"warm_frame_age_s.{FRONT}"] == "2.500"
    assert (values["warm_encoded"], values["warm_hits"], values["warm_preempted"]) == ("1", "0", "0")
    _publish(cameras, FRONT, _picture(6))
    assert warm.values(cameras.frames())[f"warm.{FRONT}"] == "stale"  # a newer frame is not warm yet
    bad = CompressedImage(format="jpeg", data=b"\x00" * 64)
    cameras._on_frame(FRONT, bad)
    assert _warm_now(warm, worker, tiny_runtime) == 0
    values = warm.values(cameras.frames())
    assert values[f"warm.{FRONT}"] == "undecodable" and warm.pending(cameras.frames()) == []
    assert warm.entry(FRONT).frame is first  # the last warm frame stays until a newer one is warm
    state.cfg.values["warm_rate_hz"] = 0.0
    values = warm.values(cameras.frames())
    assert not warm.enabled and values["warm_rate_hz"] == "0" and values[f"warm.{FRONT}"] == "off"
    warm.tick()
    assert warm._job is None  # no job while off


def test_frames_older_than_max_frame_age_are_not_warmed(tiny_runtime, worker) -> None:
    _, cameras, warm = _parts(tiny_runtime, worker, max_frame_age_s=0.5)
    frame = _publish(cameras, FRONT, _picture(7))
    assert [cam for cam, _ in warm.pending(cameras.frames())] == [FRONT]
    frame.received -= 1.0
    assert warm.pending(cameras.frames()) == []


def test_an_older_frame_never_replaces_a_newer_warm_one(tiny_runtime, worker) -> None:
    _, cameras, warm = _parts(tiny_runtime, worker)
    older = _publish(cameras, FRONT, _picture(8))
    newer = _publish(cameras, FRONT, _picture(9))
    _warm_now(warm, worker, tiny_runtime)
    out, was_warm = worker.submit(
        "ask", lambda _c: warm.ask(tiny_runtime, FRONT, older, None, QUESTIONS[0], max_new_tokens=4)
    ).result(timeout=60)
    assert not was_warm and out.token_ids == tiny_runtime.ask(_picture(8), QUESTIONS[0], 4).token_ids
    assert warm.entry(FRONT).frame is newer
