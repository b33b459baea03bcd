"""The continuous question: ``continuous_question`` asked about the latest frame at ``continuous_rate_hz``.

Each answer is published as a ``SceneAnswer`` on ``answer``. The question runs as a background job: only
when the worker is idle, and it yields to requests. While the last one still runs, a tick is deferred to
its end (one at most), so a slow answer delays the next instead of skipping it. With warm frames on, it
starts from the camera's warm frame when that is the latest one, and leaves its own frame warm
(:class:`~mobile_o_ros.ros.warm.WarmFrames`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from mobile_o_ros.msg import SceneAnswer
from mobile_o_ros.ros import outcomes
from mobile_o_ros.ros.frames import Cameras
from mobile_o_ros.ros.requests import Requests
from mobile_o_ros.ros.state import TAG, NodeState
from mobile_o_ros.ros.warm import WarmFrames
from mobile_o_ros.ros.worker import BusyError, Job, JobCancelled, Worker, WorkerStopped
from mobile_o_ros.validation import InvalidRequest


class ContinuousQuestion:
    """A timer (and a guard condition for deferred ticks) that asks the continuous question."""

    def __init__(
        self,
        node: Any,
        state: NodeState,
        worker: Worker,
        cameras: Cameras,
        requests: Requests,
        group: Any,
        warm: WarmFrames,
    ) -> None:
        self._node = node
        self._warm = warm
        self._state = state
        self._worker = worker
        self._cameras = cameras
        self._requests = requests
        self._group = group
        self._timer: Any = None
        self._kick: Any = None  # guard condition: a tick deferred while the last job ran
        self._deferred = False
        self._lock = threading.Lock()  # one tick at a time (the callback group is reentrant)
        self._job: Job | None = None

    def start(self) -> None:
        """Start the timer when ``continuous_question`` is set (at activate, or when it changes)."""
        cfg = self._state.cfg
        question = str(cfg.continuous_question).strip()
        if not question:
            return
        camera = self._cameras.resolve(str(cfg.continuous_camera))
        period = 1.0 / float(cfg.continuous_rate_hz)
        self._timer = self._node.create_timer(period, self._on_tick, callback_group=self._group)
        self._kick = self._node.create_guard_condition(self._on_tick, callback_group=self._group)
        self._deferred = False
        topic = self._state.answer_pub.topic_name
        self._node.get_logger().info(
            f"{TAG} Continuous question {question!r} on {camera} at {cfg.continuous_rate_hz:g} Hz -> {topic}"
        )

    def stop(self) -> None:
        """Stop the timer and cancel the question in flight."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        if self._kick is not None:
            self._node.destroy_guard_condition(self._kick)
            self._kick = None
        self._deferred = False
        job = self._job
        if job is not None:
            job.cancel()

    def forget(self) -> None:
        """Drop the handles without destroying them (the node's handles are gone at process exit)."""
        self._timer = self._kick = None

    def _on_tick(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # the timer and a deferred tick at once: one asks
        try:
            self._tick()
        finally:
            self._lock.release()

    def _tick(self) -> None:
        state = self._state
        if not state.active:
            return
        # The flag goes up before the check: a job that ends between the two then sees it and kicks.
        self._deferred = True
        if self._job is not None and not self._job.future.done():
            return
        self._deferred = False
        question = str(state.cfg.continuous_question).strip()
        model = state.model
        if not question or model is None:
            return
        log = self._node.get_logger()
        warm = self._warm
        try:
            frame, cam = self._cameras.latest_frame(str(state.cfg.continuous_camera))
            rgb = warm.pixels_unless_warm(cam, frame)
        except InvalidRequest as err:
            log.warning(f"{TAG} continuous question skipped: {err}", throttle_duration_sec=5.0)
            return
        unknown = model.unknown_words(question)
        if unknown:
            log.warning(
                f"{TAG} continuous question: {model.vocabulary.warning(unknown)}", throttle_duration_sec=60.0
            )
        n_new = self._requests.max_new_tokens(model, 0)

        def answer(should_cancel: Any) -> Any:
            return warm.ask(
                model, cam, frame, rgb, question, max_new_tokens=n_new, should_cancel=should_cancel
            )[0]

        t0 = time.monotonic()
        try:
            job = self._worker.submit("continuous", answer, background=True)
        except (BusyError, WorkerStopped):
            return  # a request is running or queued: requests come first
        self._job = job
        header = frame.msg.header
        job.future.add_done_callback(lambda fut: self._on_done(fut, header, cam, question, t0))

    def _on_done(self, fut: Any, header: Any, camera: str, question: str, t0: float) -> None:
        """Publish the answer (worker thread); run a deferred tick now, on the executor."""
        self._publish(fut, header, camera, question, t0)
        kick = self._kick
        if self._deferred and kick is not None:
            kick.trigger()

    def _publish(self, fut: Any, header: Any, camera: str, question: str, t0: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            err = None if fut.cancelled() else fut.exception()
            if err is not None and not isinstance(err, (JobCancelled, WorkerStopped)):
                self._node.get_logger().warning(
                    f"{TAG} continuous question failed: {outcomes.message_of(err)}"
                )
            return
        out = fut.result()
        pub = self._state.answer_pub
        if out.cancelled or pub is None or not self._state.active:
            return
        pub.publish(
            SceneAnswer(
                header=header,
                camera=camera,
                question=question,
                answer=out.answer,
                latency_ms=float((time.monotonic() - t0) * 1000.0),
            )
        )
