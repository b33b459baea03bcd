"""Live annotation: the questions of a tasks file (``annotation_tasks``) about every camera's latest frame.

At ``annotation_rate_hz`` per camera, a new frame is seen once (the runtime's ``frame`` + ``ask_about``, as
``mobile-o annotate`` does offline, greedy and seeded; with warm frames on, the camera's warm frame when it
is this one, :class:`~mobile_o_ros.ros.warm.WarmFrames`) and each answer is published as a ``FrameAnnotation``
on ``annotations`` with the frame's header; a frame that cannot be decoded gets one with ``error`` per task.
When a bool answer differs from the camera's previous one, the annotation is also published on
``annotation_events``.

A frame runs as one background job of the worker: only when it is idle, and a request preempts it (the
answers already published stay). A tick that finds a new frame while the worker is busy is counted as a
frame skipped while busy (``/diagnostics``: ``annotation_skipped_busy.<camera>``). The tasks file is read
at configure; its edits are for ``mobile-o annotate`` and are not run live.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobile_o_ros.annotate.tasks import Tasks, TasksError, load_tasks, read_value, value_text
from mobile_o_ros.msg import FrameAnnotation
from mobile_o_ros.ros.frames import Cameras, Frame
from mobile_o_ros.ros.state import TAG, NodeState
from mobile_o_ros.ros.warm import WarmFrames
from mobile_o_ros.ros.worker import BusyError, JobCancelled, Worker, WorkerStopped
from mobile_o_ros.validation import InvalidRequest


@dataclass
class CameraCounts:
    """Per camera: the last frame annotated and how many were annotated or skipped while busy."""

    last_frame: int = 0
    annotated: int = 0
    skipped_busy: int = 0
    failed: int = 0
    #: The last bool value per task (for annotation_events).
    last_bool: dict[str, bool] = field(default_factory=dict)


class LiveAnnotation:
    """The ``annotations`` and ``annotation_events`` publishers and one timer per camera."""

    def __init__(
        self,
        node: Any,
        state: NodeState,
        worker: Worker,
        cameras: Cameras,
        group: Any,
        warm: WarmFrames,
    ) -> None:
        self._node, self._state, self._worker, self._cameras, self._group = (
            node,
            state,
            worker,
            cameras,
            group,
        )
        self._warm = warm
        self.tasks: Tasks | None = None
        self._pub: Any = None
        self._events: Any = None
        self._timers: list[Any] = []
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._counts: dict[str, CameraCounts] = {}
        self._jobs: list[Any] = []

    def configure(self, qos: Any) -> None:
        """Read ``annotation_tasks`` (ValueError naming the problem) and create the publishers."""
        path = str(self._state.cfg.annotation_tasks).strip()
        self.tasks = None
        if path:
            try:
                self.tasks = load_tasks(Path(path))
            except TasksError as err:
                raise ValueError(f"annotation_tasks: {err}") from err
            if not self.tasks.questions:
                raise ValueError(f"annotation_tasks: {path} has no questions (edits run offline only)")
        self._pub = self._node.create_lifecycle_publisher(FrameAnnotation, "annotations", qos)
        self._events = self._node.create_lifecycle_publisher(FrameAnnotation, "annotation_events", qos)

    def cleanup(self) -> None:
        """Destroy the publishers."""
        for pub in (self._pub, self._events):
            if pub is not None:
                self._node.destroy_lifecycle_publisher(pub)
        self._pub = self._events = None

    def start(self) -> None:
        """A timer per camera at ``annotation_rate_hz`` (when a tasks file is set)."""
        if self.tasks is None:
            return
        period = 1.0 / float(self._state.cfg.annotation_rate_hz)
        for camera in self._state.cfg.camera_topics:
            self._counts.setdefault(camera, CameraCounts())
            self._timers.append(
                self._node.create_timer(period, lambda c=camera: self._tick(c), callback_group=self._group)
            )
        cfg = self._state.cfg
        skipped = f"; its edits run offline only ({len(self.tasks.edits)})" if self.tasks.edits else ""
        self._node.get_logger().info(
            f"{TAG} Annotating {list(cfg.camera_topics)} at {cfg.annotation_rate_hz:g} Hz with "
            f"{', '.join(q.id for q in self.tasks.questions)} -> {self._pub.topic_name}{skipped}"
        )

    def stop(self) -> None:
        """Stop the timers and cancel the frame in flight."""
        timers, self._timers = self._timers, []
        for timer in timers:
            self._node.destroy_timer(timer)
        for job in list(self._jobs):
            job.cancel()

    def forget(self) -> None:
        """Drop the handles without destroying them (process exit)."""
        self._timers = []

    def diagnostics(self) -> dict[str, str]:
        """``annotation_frames.<camera>``, ``annotation_skipped_busy.<camera>`` and ``annotation_failed``."""
        if self.tasks is None:
            return {}
        out: dict[str, str] = {}
        with self._lock:
            for camera, c in self._counts.items():
                out[f"annotation_frames.{camera}"] = str(c.annotated)
                out[f"annotation_skipped_busy.{camera}"] = str(c.skipped_busy)
                out[f"annotation_failed.{camera}"] = str(c.failed)
        return out

    # ------------------------------------------------------------------------------------------ frames
    def _tick(self, camera: str) -> None:
        state = self._state
        model, tasks = state.model, self.tasks
        if not state.active or model is None or tasks is None:
            return
        frame = self._cameras.frames().get(camera)
        with self._lock:
            counts = self._counts.setdefault(camera, CameraCounts())
            if frame is None or frame.count == counts.last_frame:
                return  # nothing new
            if camera in self._busy:
                counts.skipped_busy += 1
                return
            self._busy.add(camera)

        def work(should_cancel: Any) -> None:
            self._annotate(model, tasks, camera, frame, should_cancel)

        try:
            job = self._worker.submit("annotate", work, background=True)
        except (BusyError, WorkerStopped):
            with self._lock:
                self._busy.discard(camera)
                counts.skipped_busy += 1  # a request (or another background job) comes first
            return
        with self._lock:
            counts.last_frame = frame.count
        self._jobs.append(job)
        job.future.add_done_callback(lambda fut: self._done(fut, camera, job))

    def _done(self, fut: Any, camera: str, job: Any) -> None:
        with self._lock:
            self._busy.discard(camera)
        if job in self._jobs:
            self._jobs.remove(job)
        if fut.cancelled():
            return
        err = fut.exception()
        if err is not None and not isinstance(err, (JobCancelled, WorkerStopped)):
            self._node.get_logger().warning(f"{TAG} annotation of a frame from {camera} failed: {err}")

    def _annotate(self, model: Any, tasks: Tasks, camera: str, frame: Frame, should_cancel: Any) -> None:
        """Runs on the worker: decode, see once (or take the camera's warm frame when it is this one), ask
        every question, publish each answer as it comes."""
        msg, index, received = frame.msg, frame.count - 1, frame.received
        header = msg.header
        from_log_time = header.stamp.sec == 0 and header.stamp.nanosec == 0
        if from_log_time:  # a zero stamp: the frame's receive time instead, and the message says so
            header = type(header)(frame_id=header.frame_id)
            now = self._node.get_clock().now().nanoseconds - int((time.monotonic() - received) * 1e9)
            header.stamp.sec, header.stamp.nanosec = divmod(max(now, 0), 10**9)

        def publish(q: Any, answer: str, value: Any, error: str) -> FrameAnnotation:
            out = FrameAnnotation(
                header=header,
                stamp_from_log_time=from_log_time,
                source_topic=self._cameras.topic(camera),
                frame_index=index,
                task=q.id,
                type=q.type,
                question=q.question,
                answer=answer,
                value=value_text(value),
                error=error,
            )
            if self._pub is not None and self._state.active:
                self._pub.publish(out)
            return out

        counts = self._counts[camera]
        try:
            rgb = self._warm.pixels_unless_warm(camera, frame)
        except InvalidRequest as err:
            for q in tasks.questions:
                publish(q, "", None, str(err))
            with self._lock:
                counts.failed += 1
            return
        context = self._warm.context_of(model, camera, frame, rgb)[0]
        for q in tasks.questions:
            if should_cancel():
                raise JobCancelled("annotation preempted by a request")
            result = model.ask_about(
                context,
                q.question,
                max_new_tokens=q.max_new_tokens,
                temperature=0.0,
                seed=tasks.seed,
                should_cancel=should_cancel,
            )
            if result.cancelled:
                raise JobCancelled("annotation preempted by a request")
            value = read_value(q, result.answer)
            out = publish(q, result.answer, value, "")
            if isinstance(value, bool):
                with self._lock:
                    before = counts.last_bool.get(q.id)
                    counts.last_bool[q.id] = value
                if before is not None and before != value and self._events is not None and self._state.active:
                    self._events.publish(out)
        with self._lock:
            counts.annotated += 1
