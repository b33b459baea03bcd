"""Unit tests of the single worker thread and its bounded queue (no ROS needed)."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from mobile_o_ros.ros.worker import BusyError, JobCancelled, Worker, WorkerStopped

pytestmark = pytest.mark.runtime


@pytest.fixture
def worker():
    w = Worker(policy="queue", max_queue=2)
    w.start()
    yield w
    assert w.stop(timeout=5.0)


def _blocker(release: threading.Event, started: threading.Event | None = None):
    def fn(should_cancel):
        if started is not None:
            started.set()
        while not release.wait(0.01):
            if should_cancel():
                return "cancelled"
        return "released"

    return fn


def test_jobs_run_in_order_on_one_thread(worker):
    worker.configure("queue", 4)
    seen: list[tuple[int, int]] = []
    jobs = []
    gate = threading.Event()
    jobs.append(worker.submit("a", lambda c: gate.wait(5) and seen.append((0, threading.get_ident()))))
    for i in (1, 2):
        jobs.append(worker.submit("a", lambda c, i=i: seen.append((i, threading.get_ident()))))
    gate.set()
    for j in jobs:
        j.result(5)
    assert [i for i, _ in seen] == [0, 1, 2]
    assert {t for _, t in seen} == {worker.thread_ident}
    assert worker.call(threading.get_ident) == worker.thread_ident  # control jobs too


def test_queue_policy_bounds_waiting_jobs_and_says_busy(worker):
    release, started = threading.Event(), threading.Event()
    running = worker.submit("generate", _blocker(release, started))
    assert started.wait(5)
    queued = [worker.submit("generate", lambda c: "ok") for _ in range(2)]  # max_queue=2
    with pytest.raises(BusyError, match=r"^busy: 2 request"):
        worker.submit("generate", lambda c: "late")
    assert worker.queue_depth == 2
    release.set()
    assert running.result(5) == "released"
    assert [q.result(5) for q in queued] == ["ok", "ok"]
    stats = worker.stats()
    assert (stats.accepted, stats.rejected, stats.completed) == (3, 1, 3)


def test_reject_policy_accepts_only_when_idle():
    w = Worker(policy="reject", max_queue=8)
    w.start()
    try:
        release, started = threading.Event(), threading.Event()
        job = w.submit("ask", _blocker(release, started))
        assert started.wait(5)
        with pytest.raises(BusyError, match="busy: ask is running"):
            w.submit("ask", lambda c: 1)
        release.set()
        job.result(5)
        assert w.submit("ask", lambda c: 2).result(5) == 2
    finally:
        w.stop()


def test_cancel_queued_job_frees_its_slot_at_once(worker):
    release, started = threading.Event(), threading.Event()
    worker.submit("g", _blocker(release, started))
    assert started.wait(5)
    a = worker.submit("g", lambda c: "a")
    b = worker.submit("g", lambda c: "b")
    a.cancel()
    with pytest.raises(JobCancelled):
        a.result(1)
    c = worker.submit("g", lambda c: "c")  # the slot is free again
    release.set()
    assert (b.result(5), c.result(5)) == ("b", "c")


def test_cancel_running_job_stops_at_next_check(worker):
    steps: list[int] = []

    def long_job(should_cancel):
        for i in range(1000):
            if should_cancel():
                return ("cancelled", i)
            steps.append(i)
            time.sleep(0.005)
        return ("done", 1000)

    job = worker.submit("g", long_job)
    while len(steps) < 3:
        time.sleep(0.005)
    job.cancel()
    state, at = job.result(5)
    assert state == "cancelled" and at <= len(steps) + 1 < 1000
    assert worker.submit("g", lambda c: "next").result(5) == "next"  # the worker is free


def test_exceptions_reach_the_caller_and_the_worker_survives(worker):
    job = worker.submit("g", lambda c: (_ for _ in ()).throw(ValueError("bad input")))
    with pytest.raises(ValueError, match="bad input"):
        job.result(5)
    assert worker.submit("g", lambda c: 42).result(5) == 42
    assert worker.stats().failed == 1


def test_background_jobs_run_only_when_idle_and_yield_to_requests(worker):
    release, started = threading.Event(), threading.Event()
    bg = worker.submit("continuous", _blocker(release, started), background=True)
    assert started.wait(5)
    with pytest.raises(BusyError):
        worker.submit("continuous", lambda c: None, background=True)
    req = worker.submit("ask", lambda c: "answer")  # preempts the background job
    assert bg.result(5) == "cancelled"
    assert req.result(5) == "answer"
    assert worker.stats().accepted == 1  # background jobs are not counted as requests


def test_stop_fails_pending_jobs_and_rejects_new_ones():
    w = Worker(policy="queue", max_queue=4)
    w.start()
    release, started = threading.Event(), threading.Event()
    running = w.submit("g", _blocker(release, started))
    assert started.wait(5)
    pending = [w.submit("g", lambda c: 1) for _ in range(3)]
    assert w.stop(timeout=5)
    assert running.result(1) == "cancelled"
    for p in pending:
        with pytest.raises(WorkerStopped):
            p.result(1)
    with pytest.raises(WorkerStopped):
        w.submit("g", lambda c: 1)
    w.start()  # restartable (lifecycle cleanup -> configure)
    assert w.submit("g", lambda c: 7).result(5) == 7
    w.stop()


def test_cancel_all_keeps_the_thread(worker):
    release, started = threading.Event(), threading.Event()
    running = worker.submit("g", _blocker(release, started))
    assert started.wait(5)
    queued = worker.submit("g", lambda c: 1)
    assert worker.cancel_all("cleanup") == 2
    assert running.result(5) == "cancelled"
    with pytest.raises(WorkerStopped, match="cleanup"):
        queued.result(1)
    assert worker.alive and worker.submit("g", lambda c: 3).result(5) == 3


def test_storm_every_request_answered_exactly_once():
    """60 submitters at once: each gets a result or BusyError; every accepted job runs exactly once."""
    w = Worker(policy="queue", max_queue=3)
    w.start()
    runs: list[int] = []
    lock = threading.Lock()

    def submit(i: int) -> str:
        def fn(_c, i=i):
            time.sleep(0.01)
            with lock:
                runs.append(i)
            return f"r{i}"

        try:
            return w.submit("g", fn).result(10)
        except BusyError as err:
            assert str(err).startswith("busy")
            return "busy"

    try:
        with concurrent.futures.ThreadPoolExecutor(60) as pool:
            results = list(pool.map(submit, range(60)))
        answered = [r for r in results if r != "busy"]
        assert len(results) == 60 and answered
        assert sorted(runs) == sorted(int(r[1:]) for r in answered)  # no loss, no duplicate
        stats = w.stats()
        assert stats.accepted == len(answered) and stats.rejected == 60 - len(answered)
    finally:
        w.stop()


def test_configure_validates():
    w = Worker()
    with pytest.raises(ValueError, match="busy_policy"):
        w.configure("drop", 1)
    with pytest.raises(ValueError, match="max_queue"):
        w.configure("queue", 0)
