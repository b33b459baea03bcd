"""Warm frames: the newest frame of each camera seen while the worker is idle, so that a question about it
prefills only its own tokens.

At most ``warm_rate_hz`` times a second (0 turns warming off) a timer looks for cameras whose newest frame
is not warm yet and submits one background job that warms them in turn: the vision pass
(``encode_image``), then the prefill of the VQA prompt before the question (``frame_of_tokens``). The job
checks its cancel flag before each of these graph calls and the worker raises that flag when it accepts a
request, so a request waits for at most one graph call of the warming. What the warming finished stays:
vision tokens without their prefix are completed by the next tick, or by the question that finds them.
One warm frame is kept per camera, the newest one seen.

A question about a camera's latest frame (:meth:`WarmFrames.ask`) starts from the warm frame when it is
that very frame (the same received message of the same camera) and prefills only the question's tokens.
Otherwise it sees the frame itself (``frame_of_tokens`` after the vision pass, then ``ask_about``) and keeps
it as the camera's warm frame. Either way the answer is the one ``ask`` gives, token for token. The
continuous question and the live annotation take their frame the same way (:meth:`WarmFrames.context_of`),
so a frame is seen once whoever asks about it first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobile_o_ros.ros.frames import Cameras, Frame
from mobile_o_ros.ros.state import TAG, NodeState
from mobile_o_ros.ros.worker import BusyError, Job, Worker, WorkerStopped
from mobile_o_ros.validation import InvalidRequest

#: What ``/diagnostics`` says of a camera (``warm.<camera>``).
OFF, NONE, WARM, VISION, STALE, UNDECODABLE = "off", "none", "warm", "vision", "stale", "undecodable"


@dataclass
class WarmEntry:
    """One camera's warm frame: the frame, its vision tokens and, once prefilled, its frame context."""

    frame: Frame
    image_embeds: np.ndarray
    #: The runtime's ``FrameContext`` (vision tokens and the prompt prefix's KV cache); None until prefilled.
    context: Any = None


@dataclass
class WarmCounts:
    """Frames warmed, uses of a frame that found it warm (a question, the continuous question, a live
    annotation), and warming jobs stopped by a request."""

    encoded: int = 0
    hits: int = 0
    preempted: int = 0


class WarmFrames:
    """The warm frame of each camera, the timer that warms them, and questions that use them."""

    def __init__(
        self, node: Any, state: NodeState, worker: Worker, cameras: Cameras, group: Any = None
    ) -> None:
        self._node = node
        self._state = state
        self._worker = worker
        self._cameras = cameras
        self._group = group
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()  # one tick at a time (the callback group is reentrant)
        self._entries: dict[str, WarmEntry] = {}
        self._undecodable: dict[str, Frame] = {}
        self._timer: Any = None
        self._job: Job | None = None
        self.counts = WarmCounts()

    # ----------------------------------------------------------------------------- timer
    @property
    def rate_hz(self) -> float:
        """``warm_rate_hz`` (0 = off)."""
        return float(self._state.cfg.values.get("warm_rate_hz", 0.0))

    @property
    def enabled(self) -> bool:
        """True while ``warm_rate_hz`` is above 0."""
        return self.rate_hz > 0

    def start(self) -> None:
        """Start the timer when ``warm_rate_hz`` is above 0 (at activate, or when it changes)."""
        if not self.enabled or self._timer is not None:
            return
        self._timer = self._node.create_timer(1.0 / self.rate_hz, self.tick, callback_group=self._group)
        self._node.get_logger().info(f"{TAG} Warm frames at {self.rate_hz:g} Hz")

    def stop(self) -> None:
        """Stop the timer, cancel the warming in flight and drop the warm frames."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        job = self._job
        if job is not None:
            job.cancel()
        self.clear()

    def restart(self) -> None:
        """Apply a new ``warm_rate_hz``: stop, then start again unless it is 0."""
        self.stop()
        self.start()

    def forget(self) -> None:
        """Drop the timer handle without destroying it (the node's handles are gone at process exit)."""
        self._timer = None

    def clear(self) -> None:
        """Drop every warm frame (the frames are gone, or the model they were seen by is)."""
        with self._lock:
            self._entries.clear()
            self._undecodable.clear()

    def tick(self) -> None:
        """Submit a warming job for the cameras whose newest frame is not warm (skipped while not idle)."""
        if not self._tick_lock.acquire(blocking=False):
            return
        try:
            self._tick()
        finally:
            self._tick_lock.release()

    def _tick(self) -> None:
        state = self._state
        model = state.model
        if not state.active or model is None or not self.enabled:
            return
        if self._job is not None and not self._job.future.done():
            return
        todo = self.pending(self._cameras.frames())
        if not todo:
            return
        try:
            self._job = self._worker.submit(
                "warm", lambda should_cancel: self.warm(model, todo, should_cancel), background=True
            )
        except (BusyError, WorkerStopped):
            return  # a request is running or queued: it comes first

    def pending(self, frames: dict[str, Frame]) -> list[tuple[str, Frame]]:
        """(camera, newest frame) of each camera whose newest frame is not warm, in ``camera_topics`` order;
        frames older than ``max_frame_age_s`` (a question would refuse them) and undecodable ones are left."""
        now = time.monotonic()
        max_age = float(self._state.cfg.max_frame_age_s)
        todo = []
        with self._lock:
            for cam in self._state.cfg.camera_topics:
                frame = frames.get(cam)
                if frame is None or self._undecodable.get(cam) is frame:
                    continue
                if max_age > 0 and now - frame.received > max_age:
                    continue
                entry = self._entries.get(cam)
                if entry is None or entry.frame is not frame or entry.context is None:
                    todo.append((cam, frame))
        return todo

    # ----------------------------------------------------------------------------- worker thread
    def warm(self, model: Any, todo: list[tuple[str, Frame]], should_cancel: Callable[[], bool]) -> int:
        """Warm each (camera, frame) of ``todo``, checking ``should_cancel`` before every graph call; returns
        how many became warm. Runs on the worker thread."""
        done = 0
        for cam, frame in todo:
            entry = self.entry(cam)
            if entry is None or entry.frame is not frame:
                try:
                    rgb = Cameras.pixels(frame, cam)
                except InvalidRequest:
                    with self._lock:
                        self._undecodable[cam] = frame
                    continue
                if self._preempted(should_cancel):
                    return done
                entry = WarmEntry(frame, model.encode_image(rgb))
                if not self._keep(cam, entry):
                    continue
            if entry.context is None:
                if self._preempted(should_cancel):
                    return done
                context = model.frame_of_tokens(entry.image_embeds)
                with self._lock:
                    entry.context = context
                    self.counts.encoded += 1
            done += 1
        return done

    def context_of(self, model: Any, camera: str, frame: Frame, rgb: np.ndarray | None) -> tuple[Any, bool]:
        """The frame context (vision tokens and the prompt prefix's KV cache) of ``frame``, the latest of
        ``camera``, and whether it was warm. The warm one when it is that very frame; otherwise the frame is
        seen now and kept as the camera's warm frame; with warming off, seen now and not kept. ``rgb``: the
        frame's pixels when already decoded (decoded here otherwise). Runs on the worker thread."""
        if not self.enabled:
            return model.frame(Cameras.pixels(frame, camera) if rgb is None else rgb), False
        entry = self.entry(camera)
        if entry is not None and entry.frame is frame and entry.context is not None:
            with self._lock:
                self.counts.hits += 1
            return entry.context, True
        if entry is None or entry.frame is not frame:
            if rgb is None:
                rgb = Cameras.pixels(frame, camera)
            entry = WarmEntry(frame, model.encode_image(rgb))
        context = model.frame_of_tokens(entry.image_embeds)
        with self._lock:
            entry.context = context
        self._keep(camera, entry)
        return context, False

    def ask(
        self, model: Any, camera: str, frame: Frame, rgb: np.ndarray | None, question: str, **options: Any
    ) -> tuple[Any, bool]:
        """Answer ``question`` about ``frame``, the latest of ``camera``: (the model's AskResult, whether the
        frame was warm). ``rgb`` as :meth:`context_of`; options as
        :meth:`~mobile_o_ros.runtime.engine.MobileORuntime.ask_about`. Runs on the worker thread."""
        context, was_warm = self.context_of(model, camera, frame, rgb)
        return model.ask_about(context, question, **options), was_warm

    def pixels_unless_warm(self, camera: str, frame: Frame) -> np.ndarray | None:
        """None when warming is on and ``frame`` is the camera's warm frame, else its decoded pixels
        (InvalidRequest when it cannot be decoded): what :meth:`context_of` needs."""
        if self.enabled and self.is_warm(camera, frame):
            return None
        return Cameras.pixels(frame, camera)

    def entry(self, camera: str) -> WarmEntry | None:
        """The camera's warm frame (None when it has none)."""
        with self._lock:
            return self._entries.get(camera)

    def is_warm(self, camera: str, frame: Frame) -> bool:
        """True when ``frame`` is the camera's warm frame, vision tokens and prefix both."""
        entry = self.entry(camera)
        return entry is not None and entry.frame is frame and entry.context is not None

    def _keep(self, camera: str, entry: WarmEntry) -> bool:
        """Make ``entry`` the camera's warm frame unless it holds a newer one; True when kept."""
        with self._lock:
            current = self._entries.get(camera)
            if current is not None and current.frame.received > entry.frame.received:
                return False
            self._entries[camera] = entry
            return True

    def _preempted(self, should_cancel: Callable[[], bool]) -> bool:
        if not should_cancel():
            return False
        with self._lock:
            self.counts.preempted += 1
        return True

    # ----------------------------------------------------------------------------- diagnostics
    def values(self, frames: dict[str, Frame], now: float | None = None) -> dict[str, str]:
        """The ``/diagnostics`` values: ``warm_rate_hz``, the counts, and per camera its state
        (``warm.<camera>``: off, none, warm, vision, stale or undecodable) and the warm frame's age in
        seconds since the node received it (``warm_frame_age_s.<camera>``, empty when none)."""
        now = time.monotonic() if now is None else now
        out = {"warm_rate_hz": f"{self.rate_hz:g}"}
        with self._lock:
            out["warm_encoded"] = str(self.counts.encoded)
            out["warm_hits"] = str(self.counts.hits)
            out["warm_preempted"] = str(self.counts.preempted)
            for cam in self._state.cfg.camera_topics:
                entry = self._entries.get(cam)
                newest = frames.get(cam)
                if not self.enabled:
                    word = OFF
                elif newest is not None and self._undecodable.get(cam) is newest:
                    word = UNDECODABLE
                elif entry is None:
                    word = NONE
                elif entry.frame is not newest:
                    word = STALE
                else:
                    word = WARM if entry.context is not None else VISION
                out[f"warm.{cam}"] = word
                out[f"warm_frame_age_s.{cam}"] = "" if entry is None else f"{now - entry.frame.received:.3f}"
        return out
