"""The three action servers' goals: feedback per token or step, cancel, and the goal's final state.

Every goal is accepted; one that cannot be served ends ABORTED with the reason in its result. A goal's
:class:`GoalProgress` holds its worker job, the steps or tokens done, and how far it was when the client's
cancel came, so the node can log ``<what> cancelled: requested after K, stopped after M``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from rclpy.action import CancelResponse, GoalResponse

from mobile_o_ros.action import AskScene, EditImage, GenerateImage
from mobile_o_ros.ros import rclpy_compat
from mobile_o_ros.ros.requests import KINDS, Progress, Requests
from mobile_o_ros.ros.state import TAG
from mobile_o_ros.ros.worker import Job, JobCancelled


@dataclass
class GoalProgress(Progress):
    """One goal in flight: its :class:`Progress`, its worker job, and what its cancel saw."""

    job: Job | None = None
    #: Steps or tokens done when the client's cancel came; None while it did not.
    cancelled_at: int | None = None


class Goals:
    """Goal, cancel and execute callbacks of the ``ask``, ``generate_image`` and ``edit_image`` actions."""

    def __init__(self, node: Any, requests: Requests) -> None:
        self._node = node
        self._requests = requests
        self._lock = threading.Lock()
        self._goals: dict[bytes, GoalProgress] = {}

    def _progress(self, goal_id: bytes) -> GoalProgress:
        with self._lock:
            return self._goals.setdefault(goal_id, GoalProgress())

    def on_goal(self, goal_request: Any) -> GoalResponse:
        """Accept every goal: refusals are reported in the result (success=false, status, message)."""
        return GoalResponse.ACCEPT

    def on_cancel(self, goal_handle: Any) -> CancelResponse:
        """Cancel: a queued job is dropped at once, a running one stops at its next step or token."""
        progress = self._progress(bytes(goal_handle.goal_id.uuid))
        with self._lock:
            progress.cancelled_at = progress.done
            job = progress.job
        if job is not None:
            job.cancel()
        return CancelResponse.ACCEPT

    def execute(self, kind: str, action: Any, goal_handle: Any) -> Any:
        """Run one goal of ``kind`` (ask, generate, edit) to its final state; return its result."""
        t0 = time.monotonic()
        what = f"{KINDS[kind]} goal"
        result = action.Result()
        goal_id = bytes(goal_handle.goal_id.uuid)
        progress = self._progress(goal_id)
        if kind == "ask":
            progress.feedback = lambda text, n: self._publish(
                goal_handle, action.Feedback(text=text, num_tokens=n)
            )
        else:
            progress.feedback = lambda step, total: self._publish(
                goal_handle, action.Feedback(step=step, total=total)
            )

        def on_submit(job: Job) -> None:
            with self._lock:
                progress.job = job
                asked = progress.cancelled_at is not None
            if asked or goal_handle.is_cancel_requested:
                job.cancel()

        try:
            prepared = self._requests.prepare(kind, goal_handle.request, progress)
            out = self._requests.run(prepared, lambda: goal_handle.is_cancel_requested, on_submit)
        except Exception as err:
            self._requests.refuse(what, result, err, t0)
            return self._finish(what, goal_handle, result, isinstance(err, JobCancelled))
        self._requests.fill(result, prepared, out, t0, progress)
        rclpy_compat.let_feedback_arrive(progress.last_feedback)
        return self._finish(what, goal_handle, result, out.cancelled)

    def on_ask(self, goal_handle: Any) -> Any:
        """AskScene action: token feedback (the text so far), cancel between tokens."""
        return self.execute("ask", AskScene, goal_handle)

    def on_generate(self, goal_handle: Any) -> Any:
        """GenerateImage action: (step, total) feedback per denoising step, cancel between steps."""
        return self.execute("generate", GenerateImage, goal_handle)

    def on_edit(self, goal_handle: Any) -> Any:
        """EditImage action: (step, total) feedback per denoising step, cancel between steps."""
        return self.execute("edit", EditImage, goal_handle)

    def _publish(self, goal_handle: Any, feedback: Any) -> None:
        """Publish a goal's feedback; dropped once the context is down (SIGINT/SIGTERM while the job runs:
        the action server's publisher is gone, and the exit path cancels the job)."""
        try:
            goal_handle.publish_feedback(feedback)
        except Exception:
            if self._node.context.ok():
                raise

    def _finish(self, what: str, goal_handle: Any, result: Any, cancelled: bool) -> Any:
        """Set the goal's final state: canceled (when the client asked), succeeded, or aborted."""
        goal_id = bytes(goal_handle.goal_id.uuid)
        with self._lock:
            progress = self._goals.get(goal_id, GoalProgress())
        log = self._node.get_logger()
        if cancelled and progress.cancelled_at is not None:
            at_cancel, done = progress.cancelled_at, progress.done
            log.info(f"{TAG} {what} cancelled: requested after {at_cancel}, stopped after {done}")
            rclpy_compat.wait_until_canceling(goal_handle)
        try:
            if cancelled and goal_handle.is_cancel_requested:
                goal_handle.canceled()
            elif result.success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
        except Exception as exc:
            log.warning(f"{TAG} {what}: cannot set the goal state ({exc}); aborting")
            if goal_handle.is_active:
                goal_handle.abort()
        with self._lock:
            self._goals.pop(goal_id, None)
        return result
