"""The tiered consumer's sending threads (mailjournal/consumer/workers.py): every job runs once,
the thread idle the shortest takes the next one, shutdown keeps or drops waiting jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from mailjournal.consumer.workers import Workers

DEADLINE = 10.0


def test_one_job_at_a_time_stays_on_one_hot_thread() -> None:
    """A host that keeps up needs one thread: a job submitted after the previous one ended goes
    to the thread that just went idle, not round the pool (as ThreadPoolExecutor does)."""
    pool = Workers(8, "t")
    names: list[str] = []
    try:
        for _ in range(50):
            done = threading.Event()

            def job(done: threading.Event = done) -> None:
                names.append(threading.current_thread().name)
                done.set()

            pool.submit(job)
            assert done.wait(DEADLINE)
            # the thread is idle again once it has pushed itself back; wait for that state
            assert _until(lambda: len(pool._idle) == 8)
    finally:
        pool.shutdown()
    assert len(names) == 50
    assert len(set(names)) == 1, set(names)


def test_jobs_beyond_the_threads_wait_and_all_run_once() -> None:
    pool = Workers(3, "t")
    release = threading.Event()
    started = threading.Semaphore(0)
    ran: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        started.release()
        assert release.wait(DEADLINE)
        with lock:
            ran.append(i)

    try:
        for i in range(20):
            pool.submit(lambda i=i: job(i))
        for _ in range(3):
            assert started.acquire(timeout=DEADLINE)
        assert not started.acquire(timeout=0)  # three threads: the fourth job waits
        assert len(pool._waiting) == 17
        release.set()
    finally:
        pool.shutdown(wait=True)
    assert sorted(ran) == list(range(20))


def test_a_job_that_raises_does_not_take_its_thread() -> None:
    pool = Workers(1, "t")
    done = threading.Event()

    def bad() -> None:
        raise RuntimeError("boom")

    try:
        pool.submit(bad)
        pool.submit(done.set)
        assert done.wait(DEADLINE)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("cancel", [True, False])
def test_shutdown_drops_or_runs_the_waiting_jobs(cancel: bool) -> None:
    pool = Workers(1, "t")
    release, busy = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        busy.set()
        assert release.wait(DEADLINE)
        ran.append("first")

    pool.submit(first)
    assert busy.wait(DEADLINE)
    pool.submit(lambda: ran.append("waiting"))
    stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel": cancel})
    stopper.start()
    assert _until(lambda: pool._closed)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: ran.append("late"))
    release.set()
    stopper.join(DEADLINE)
    assert not stopper.is_alive()
    assert ran == (["first"] if cancel else ["first", "waiting"])
    assert not any(t.thread is not None and t.thread.is_alive() for t in pool._all)


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Workers(0, "t")


def _until(predicate: Callable[[], bool], deadline: float = DEADLINE) -> bool:
    """Wait on a state with a deadline (the pool's threads change it)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.001)
    return predicate()
