"""Result status, request defaults, the client's request dataclasses and the late-feedback iterator.

The status mapping, the fill functions and :class:`FeedbackStream` need no ROS (``runtime``); the parts
that build messages or prepare requests on a node's state are marked ``ros``.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from mobile_o_ros.ros import outcomes, rclpy_compat
from mobile_o_ros.ros.outcomes import NotActive, Status
from mobile_o_ros.ros.worker import BusyError, JobCancelled, WorkerStopped
from mobile_o_ros.validation import InvalidRequest

pytestmark = pytest.mark.runtime


# ================================================================================== status
@pytest.mark.parametrize(
    ("err", "status"),
    [
        (NotActive("not active: the node is inactive"), Status.NOT_ACTIVE),
        (WorkerStopped("the node is shutting down"), Status.NOT_ACTIVE),
        (BusyError("busy: 4 waiting"), Status.BUSY),
        (InvalidRequest("empty prompt"), Status.INVALID),
        (JobCancelled("generate cancelled before it started"), Status.CANCELLED),
        (RuntimeError("boom"), Status.FAILED),
    ],
)
def test_every_exception_has_a_status(err: Exception, status: Status) -> None:
    result = outcomes.fill_refused(SimpleNamespace(), err, time.monotonic())
    assert (result.status, result.success) == (status, False)
    assert result.message == outcomes.message_of(err) and result.latency_ms >= 0
    assert str(Status(result.status)) == status.name


def test_answers_and_images_report_what_was_done() -> None:
    t0 = time.monotonic()
    answer = SimpleNamespace(answer="a red square", num_tokens=3, cancelled=False)
    r = outcomes.fill_answer(SimpleNamespace(), answer, "header", t0, "; the model never saw: dog")
    assert (r.status, r.success, r.num_tokens, r.image_header) == (Status.OK, True, 3, "header")
    assert r.message.endswith("(3 tokens); the model never saw: dog")
    answer.cancelled = True
    r = outcomes.fill_answer(SimpleNamespace(), answer, "header", t0)
    assert (r.status, r.success, r.message) == (Status.CANCELLED, False, "cancelled after 3 token(s)")

    image = SimpleNamespace(image=np.zeros((2, 2, 3), np.uint8), seed=7, steps=4, cancelled=False)
    r = outcomes.fill_image(SimpleNamespace(), image, "msg", "generate", 4, t0)
    assert (r.status, r.success, r.steps_done, r.seed, r.image) == (Status.OK, True, 4, 7, "msg")
    assert r.message.startswith("generate done in ") and r.message.endswith("(4 steps, seed 7)")
    stopped = SimpleNamespace(image=None, seed=7, steps=20, cancelled=True)
    r = outcomes.fill_image(SimpleNamespace(), stopped, None, "edit", 6, t0)
    assert (r.status, r.success, r.steps_done, r.message) == (
        Status.CANCELLED,
        False,
        6,
        "cancelled after 6/20 steps",
    )


# ================================================================================== late feedback
def _stream_of(*items: int) -> rclpy_compat.FeedbackStream:
    stream = rclpy_compat.FeedbackStream()
    for i in items:
        stream.put(SimpleNamespace(step=i))
    return stream


def _caught_up_at(n: int):
    return lambda last: last is not None and last.step >= n


def test_feedback_after_the_result_is_still_yielded() -> None:
    stream = _stream_of(1, 2)
    stream.finish()  # the result overtook step 3's feedback
    late = threading.Timer(0.2, lambda: stream.put(SimpleNamespace(step=3)))
    late.start()
    steps = [fb.step for fb in stream.iterate(5.0, _caught_up_at(3), lambda: AssertionError("silent"))]
    late.join()
    assert steps == [1, 2, 3] and [fb.step for _, fb in stream.received] == [1, 2, 3]


def test_feedback_that_never_comes_ends_the_iterator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rclpy_compat.FeedbackStream, "LATE_S", 0.1)
    stream = _stream_of(1)
    stream.finish()
    assert [fb.step for fb in stream.iterate(5.0, _caught_up_at(3), lambda: AssertionError())] == [1]


def test_silence_before_the_result_raises_the_given_error() -> None:
    stream = _stream_of()
    with pytest.raises(TimeoutError, match="no feedback"):
        list(stream.iterate(0.05, _caught_up_at(1), lambda: TimeoutError("no feedback")))


# ================================================================================== ROS parts
@pytest.mark.ros
def test_status_mirrors_the_interface_constants() -> None:
    pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")
    import mobile_o_ros.action as actions
    import mobile_o_ros.srv as services

    for name in ("AskScene", "GenerateImage", "EditImage"):
        for cls in (getattr(services, name).Response, getattr(actions, name).Result):
            assert {s.name: getattr(cls, s.name) for s in Status} == {s.name: int(s) for s in Status}


@pytest.mark.ros
def test_request_dataclasses_build_requests_and_goals() -> None:
    pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")
    from mobile_o_ros.action import EditImage as EditAction
    from mobile_o_ros.srv import AskScene, GenerateImage

    from mobile_o_ros.ros.client import AskRequest, EditRequest, GenerateRequest, _as_request

    msg = AskRequest("what?", camera="/front", max_new_tokens=np.int64(5)).to_msg(AskScene.Request)
    assert (msg.question, msg.camera, msg.max_new_tokens, msg.seed, msg.image.width) == (
        "what?",
        "/front",
        5,
        -1,
        0,
    )
    assert type(msg.max_new_tokens) is int
    goal = EditRequest("make it blue", image=np.zeros((4, 6, 3), np.uint8), steps=3).to_msg(EditAction.Goal)
    assert (goal.instruction, goal.steps, goal.image.encoding, goal.image.width, goal.image.height) == (
        "make it blue",
        3,
        "rgb8",
        6,
        4,
    )
    request = GenerateRequest("a cube", steps=2, seed=9)
    assert request.to_msg(GenerateImage.Request).guidance_scale == 0.0
    assert _as_request(GenerateRequest, request, {}) is request
    assert _as_request(GenerateRequest, "a cube", {"steps": 2, "seed": 9}) == request
    with pytest.raises(TypeError, match="not both"):
        _as_request(GenerateRequest, request, {"steps": 4})


@pytest.mark.ros
def test_a_request_gives_0_the_parameter_fills_in_then_the_manifest(tiny_runtime) -> None:
    """Request value, else the node's parameter, else the model's default from its manifest."""
    pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
    from mobile_o_ros.ros import params
    from mobile_o_ros.ros.requests import Requests
    from mobile_o_ros.ros.state import NodeState

    defaults = tiny_runtime.defaults
    values = {p.name: p.default for p in params.PARAMETERS}
    state = NodeState(cfg=params.Settings(values), name="/test/mobile_o")
    requests = Requests(node=None, state=state, worker=None, cameras=None)
    assert requests.steps_and_guidance(tiny_runtime, 0, 0.0) == (defaults.steps, defaults.guidance_scale)
    assert requests.max_new_tokens(tiny_runtime, 0) == defaults.max_new_tokens
    values.update(default_steps=3, default_guidance_scale=2.5, max_new_tokens=5)
    assert requests.steps_and_guidance(tiny_runtime, 0, 0.0) == (3, 2.5)
    assert requests.max_new_tokens(tiny_runtime, 0) == 5
    assert requests.steps_and_guidance(tiny_runtime, 7, 1.25) == (7, 1.25)
    assert requests.max_new_tokens(tiny_runtime, 9) == 9
    values.update(max_steps=6)
    with pytest.raises(InvalidRequest, match="exceeds max_steps 6"):
        requests.steps_and_guidance(tiny_runtime, 7, 0.0)
    with pytest.raises(InvalidRequest, match="guidance_scale must be finite"):
        requests.steps_and_guidance(tiny_runtime, 2, float("nan"))


@pytest.mark.ros
def test_progress_counts_steps_and_tokens_and_publishes_feedback() -> None:
    pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
    from mobile_o_ros.ros.requests import Progress

    sent: list[tuple[object, int]] = []
    quiet, loud = Progress(), Progress(feedback=lambda a, b: sent.append((a, b)))
    quiet.on_step(2, 5)
    loud.on_step(3, 5)
    assert (quiet.done, quiet.last_feedback, loud.done, sent) == (2, 0.0, 3, [(3, 5)])
    assert loud.last_feedback > 0
    loud.on_token("a red", 2)
    assert loud.done == 2 and sent[-1] == ("a red", 2)
