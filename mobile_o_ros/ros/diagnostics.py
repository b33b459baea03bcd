"""The node's ``/diagnostics`` status: state, backend, model, queue, counters, latencies, frame ages, warm
frames, RSS."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from mobile_o_ros.ros.frames import Cameras
from mobile_o_ros.ros.state import NodeState
from mobile_o_ros.ros.warm import WarmFrames
from mobile_o_ros.ros.worker import Worker

#: Job kinds whose last latency is reported (``last_latency_ms.<kind>``).
LATENCY_KINDS = ("ask", "generate", "edit", "continuous", "annotate")


def _rss_mb() -> str:
    try:
        import psutil

        return f"{psutil.Process().memory_info().rss / 2**20:.1f}"
    except Exception:
        return ""


class Diagnostics:
    """Builds the node's one ``DiagnosticStatus`` (named ``mobile_o: <node name>``)."""

    def __init__(
        self,
        state: NodeState,
        worker: Worker,
        cameras: Cameras,
        extra: Callable[[], dict[str, str]] | None = None,
        warm: WarmFrames | None = None,
    ) -> None:
        self._state = state
        self._worker = worker
        self._cameras = cameras
        #: The warm frames (``warm.<camera>``, ``warm_frame_age_s.<camera>``, counts).
        self._warm = warm
        #: More key/values (the live annotation's counters).
        self._extra = extra

    def status(self) -> DiagnosticStatus:
        """The current status: ERROR after a failed transition, WARN when inactive or a camera is silent."""
        state, cfg = self._state, self._state.cfg
        stats = self._worker.stats()
        values: dict[str, str] = {
            "state": state.label,
            "backend": str(cfg.backend),
            "model": str(state.model_info.get("model", "")),
            "model_dir": str(cfg.model_dir),
            "int8_graphs": ",".join(state.model_info.get("int8_graphs", [])),
            "busy_policy": stats.policy,
            "max_queue": str(stats.max_queue),
            "queue_depth": str(stats.queued),
            "running": stats.running or "",
            "accepted": str(stats.accepted),
            "rejected_busy": str(stats.rejected),
            "completed": str(stats.completed),
            "failed": str(stats.failed),
            "cancelled": str(stats.cancelled),
        }
        for kind in LATENCY_KINDS:
            latency = stats.last_latency_s.get(kind)
            values[f"last_latency_ms.{kind}"] = "" if latency is None else f"{latency * 1000.0:.1f}"
        now = time.monotonic()
        stale: list[str] = []
        frames = self._cameras.frames()
        max_age = float(cfg.max_frame_age_s)
        for cam in cfg.camera_topics:
            frame = frames.get(cam)
            age = None if frame is None else now - frame.received
            values[f"frame_age_s.{cam}"] = "" if age is None else f"{age:.3f}"
            values[f"frames_received.{cam}"] = "0" if frame is None else str(frame.count)
            if state.active and (age is None or (max_age > 0 and age > max_age)):
                stale.append(cam)
        if self._extra is not None:
            values.update(self._extra())
        if self._warm is not None:
            values.update(self._warm.values(frames, now))
        values["rss_mb"] = _rss_mb()
        status = DiagnosticStatus(
            name=f"mobile_o: {state.name}", hardware_id=f"{cfg.backend}:{values['model']}"
        )
        if state.last_error:
            status.level, status.message = DiagnosticStatus.ERROR, state.last_error
        elif not state.active:
            status.level, status.message = DiagnosticStatus.WARN, f"not active ({state.label})"
        elif stale:
            status.level, status.message = DiagnosticStatus.WARN, f"no recent frame from {', '.join(stale)}"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"active; {'busy' if stats.running else 'idle'}, {stats.queued} queued"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def message(self, stamp: Any) -> DiagnosticArray:
        """A DiagnosticArray holding :meth:`status`, stamped ``stamp``."""
        msg = DiagnosticArray(status=[self.status()])
        msg.header.stamp = stamp
        return msg
