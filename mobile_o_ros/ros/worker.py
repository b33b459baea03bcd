"""The single worker thread that owns the Mobile-O runtime and runs every job, with a bounded queue.

No ROS imports: ROS callbacks only *submit* jobs here and wait on their futures, so this module is
unit-testable on its own.

* One thread runs everything that touches the backend (model load, jobs, close), so the backend (and a
  CUDA context) is only ever used from one thread.
* ``busy_policy``: ``queue`` accepts a job while fewer than ``max_queue`` jobs wait (one more may be
  running); ``reject`` accepts a job only when no request job is running or waiting. A job that is not
  accepted raises :class:`BusyError` immediately, so callers can answer "busy" instead of dropping it.
* *Background* jobs (the continuous-question mode) run only when the worker is idle, never count against
  ``max_queue``, and are cancelled as soon as a request job is accepted.
* Every accepted job's future completes exactly once: with the job's result, its exception, or
  :class:`JobCancelled` / :class:`WorkerStopped`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("queue", "reject")

ShouldCancel = Callable[[], bool]


class BusyError(RuntimeError):
    """The job was not accepted under the busy policy; ``str(err)`` starts with ``busy``."""


class JobCancelled(RuntimeError):
    """The job was cancelled before it started (or preempted while queued)."""


class WorkerStopped(RuntimeError):
    """The worker stopped (node cleanup or shutdown) before the job could run."""


@dataclass(eq=False)
class Job:
    """One unit of work for the worker thread.

    ``fn(should_cancel)`` runs on the worker thread; it should poll ``should_cancel()`` between steps or
    tokens and stop early when it returns True.
    """

    kind: str
    fn: Callable[[ShouldCancel], Any]
    background: bool = False
    control: bool = False
    id: int = 0
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    _worker: Worker | None = field(default=None, repr=False)

    def should_cancel(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        """Ask the job to stop: a queued job is dropped at once, a running job stops at its next check."""
        self.cancel_event.set()
        if self._worker is not None:
            self._worker._drop_if_queued(self, JobCancelled(f"{self.kind} cancelled before it started"))

    def result(self, timeout: float | None = None) -> Any:
        """Block until the job completes; return its result or raise its exception."""
        return self.future.result(timeout)

    @property
    def wait_s(self) -> float:
        """Seconds spent queued (until start, or until now)."""
        end = self.started if self.started is not None else time.monotonic()
        return end - self.submitted

    @property
    def run_s(self) -> float:
        """Seconds spent running (0 when it never started)."""
        if self.started is None:
            return 0.0
        return (self.finished if self.finished is not None else time.monotonic()) - self.started


@dataclass
class WorkerStats:
    """A snapshot for diagnostics."""

    policy: str
    max_queue: int
    queued: int
    running: str | None
    accepted: int
    rejected: int
    completed: int
    failed: int
    cancelled: int
    last_latency_s: dict[str, float]


class Worker:
    """A single thread with a bounded FIFO of jobs (see the module docstring for the policy)."""

    def __init__(self, policy: str = "queue", max_queue: int = 4, name: str = "mobile_o_worker") -> None:
        self._name = name
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count(1)
        self._accepted = self._rejected = self._completed = self._failed = self._cancelled = 0
        self._last_latency: dict[str, float] = {}
        self.policy = "queue"
        self.max_queue = 1
        self.configure(policy, max_queue)

    # ----------------------------------------------------------------------------- setup
    def configure(self, policy: str, max_queue: int) -> None:
        """Set the busy policy (``queue`` | ``reject``) and the queue bound (>= 1)."""
        if policy not in POLICIES:
            raise ValueError(f"busy_policy must be one of {POLICIES}, got {policy!r}")
        if int(max_queue) < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        with self._lock:
            self.policy = policy
            self.max_queue = int(max_queue)

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread_ident(self) -> int | None:
        """The worker thread's ident (to assert which thread ran something)."""
        return None if self._thread is None else self._thread.ident

    # ----------------------------------------------------------------------------- submit
    def _pending_requests(self) -> int:
        return sum(1 for j in self._queue if not j.background and not j.control)

    def _busy_reason(self) -> str | None:
        """Why a request job cannot be accepted now (None = it can). Caller holds the lock."""
        running_request = (
            self._running is not None and not self._running.background and not self._running.control
        )
        waiting = self._pending_requests()
        if self.policy == "reject":
            if running_request or waiting:
                what = self._running.kind if running_request and self._running else "a job"
                return f"busy: {what} is running (busy_policy=reject); try again later"
            return None
        if waiting >= self.max_queue:
            return (
                f"busy: {waiting} request(s) already queued (busy_policy=queue, max_queue={self.max_queue}); "
                "try again later"
            )
        return None

    def submit(self, kind: str, fn: Callable[[ShouldCancel], Any], background: bool = False) -> Job:
        """Queue a job; raise :class:`BusyError` if the policy refuses it, :class:`WorkerStopped` if stopped.

        A request job (``background=False``) preempts background jobs. A background job is accepted only
        when the worker is idle.
        """
        job = Job(kind=kind, fn=fn, background=background)
        with self._lock:
            if self._stopping or not self.alive:
                raise WorkerStopped("the worker is not running (node not configured or shutting down)")
            if background:
                if self._running is not None or self._queue:
                    raise BusyError("busy: the worker is not idle")
            else:
                reason = self._busy_reason()
                if reason is not None:
                    self._rejected += 1
                    raise BusyError(reason)
                self._preempt_background()
                self._accepted += 1
            job.id = next(self._ids)
            job._worker = self
            self._queue.append(job)
            self._lock.notify_all()
        return job

    def call(self, fn: Callable[[], Any], timeout: float | None = None, kind: str = "control") -> Any:
        """Run ``fn()`` on the worker thread ahead of queued jobs (model load/close); return its result.

        Not subject to the busy policy; waits for the running job (if any) to finish first.
        """
        job = Job(kind=kind, fn=lambda _cancel: fn(), control=True)
        with self._lock:
            if self._stopping or not self.alive:
                raise WorkerStopped("the worker is not running")
            job.id = next(self._ids)
            self._queue.appendleft(job)
            self._lock.notify_all()
        return job.result(timeout)

    def _preempt_background(self) -> None:
        """Cancel the running background job and drop queued ones. Caller holds the lock."""
        if self._running is not None and self._running.background:
            self._running.cancel_event.set()
        for job in [j for j in self._queue if j.background]:
            self._queue.remove(job)
            job.cancel_event.set()
            self._finish(job, error=JobCancelled(f"{job.kind} preempted by a request"))

    def _drop_if_queued(self, job: Job, error: BaseException) -> None:
        with self._lock:
            if job in self._queue:
                self._queue.remove(job)
                self._finish(job, error=error)

    # ----------------------------------------------------------------------------- cancel / stop
    def cancel_all(self, reason: str = "cancelled") -> int:
        """Cancel the running job and fail every queued request/background job; return how many were hit."""
        with self._lock:
            n = 0
            if self._running is not None and not self._running.control:
                self._running.cancel_event.set()
                n += 1
            for job in [j for j in self._queue if not j.control]:
                self._queue.remove(job)
                job.cancel_event.set()
                self._finish(job, error=WorkerStopped(reason))
                n += 1
            return n

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel everything, stop the thread; True when it exited within ``timeout``."""
        with self._lock:
            self._stopping = True
            if self._running is not None:
                self._running.cancel_event.set()
            while self._queue:
                job = self._queue.popleft()
                job.cancel_event.set()
                self._finish(job, error=WorkerStopped("the node is shutting down"))
            self._lock.notify_all()
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    # ----------------------------------------------------------------------------- stats
    def stats(self) -> WorkerStats:
        """A consistent snapshot of counters and the queue."""
        with self._lock:
            return WorkerStats(
                policy=self.policy,
                max_queue=self.max_queue,
                queued=self._pending_requests(),
                running=None if self._running is None else self._running.kind,
                accepted=self._accepted,
                rejected=self._rejected,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                last_latency_s=dict(self._last_latency),
            )

    @property
    def queue_depth(self) -> int:
        """Request jobs waiting (not counting the running one)."""
        with self._lock:
            return self._pending_requests()

    @property
    def idle(self) -> bool:
        """Nothing running or queued."""
        with self._lock:
            return self._running is None and not self._queue

    # ----------------------------------------------------------------------------- the loop
    def _finish(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        """Complete a job's future exactly once. Caller holds the lock."""
        if job.future.done():
            return
        job.finished = time.monotonic()
        if error is None:
            job.future.set_result(result)
            if not job.control:
                self._completed += 1
                self._last_latency[job.kind] = job.run_s
        else:
            job.future.set_exception(error)
            if isinstance(error, (JobCancelled, WorkerStopped)):
                self._cancelled += 1
            elif not job.control:
                self._failed += 1

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._queue:
                    return
                job = self._queue.popleft()
                if job.cancel_event.is_set():
                    self._finish(job, error=JobCancelled(f"{job.kind} cancelled before it started"))
                    continue
                self._running = job
                job.started = time.monotonic()
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn(job.should_cancel)
            except BaseException as err:
                error = err
            with self._lock:
                self._running = None
                self._finish(job, result, error)
                self._lock.notify_all()
