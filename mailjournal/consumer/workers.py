"""The sending threads of the tiered consumer: a fixed pool that gives each job to the thread
that went idle last.

Why not ``concurrent.futures.ThreadPoolExecutor``: it wakes its idle threads in turn, so every
one of ``concurrency`` threads (16 by default) takes part even when the smart host answers in
microseconds and two would keep up. Each of them then competes for the GIL on every send and
receive: with 16 threads, delivery of a 1 KB copy cost 25 context switches and 0.49 ms of CPU;
with the threads a fast host needs, 10 and 0.40 ms (``bench/bench_delivery.py``). Here the
thread idle the shortest takes the next job (a stack), and a thread that finishes takes a
waiting job without sleeping, so a fast host keeps a few threads hot and the rest asleep; a slow
one wakes as many as it needs, up to all of them. Each thread borrows a reused SMTP session per
job (most recently used first, :class:`mailjournal.smtp.client.SmtpClient`), so the hot threads
also keep the hot sessions.

No futures: a job is a call that handles its own errors (the consumer's ``_run_job`` records
every outcome). One that raises anyway is logged, and its thread goes on.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]


class _Thread:
    __slots__ = ("job", "thread", "wake")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # released to hand the thread a job (or to stop it)
        self.thread: threading.Thread | None = None


class Workers:
    """``size`` threads named ``name-N``; :meth:`submit` never blocks."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread, not {size}")
        self._lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._idle: list[_Thread] = []  # a stack: the last to go idle is woken first
        self._closed = False
        self._all = [_Thread() for _ in range(size)]
        for i, t in enumerate(self._all):
            t.thread = threading.Thread(
                target=self._run, args=(t,), name=f"{name}-{i}", daemon=True
            )
            self._idle.append(t)
            t.thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("submit after shutdown")
            if not self._idle:
                self._waiting.append(job)
                return
            t = self._idle.pop()
            t.job = job
        t.wake.release()

    def _run(self, t: _Thread) -> None:
        while True:
            t.wake.acquire()
            job, t.job = t.job, None  # the thread holds no finished job's record
            if job is None:
                return  # shutdown
            while job is not None:
                try:
                    job()
                except BaseException:
                    log.exception("a job of thread %s raised", threading.current_thread().name)
                with self._lock:
                    if self._waiting:
                        job = self._waiting.popleft()
                    else:
                        job = None
                        if not self._closed:
                            self._idle.append(t)
            if self._closed:
                return

    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        """No more jobs; ``cancel``: jobs not yet started are dropped, else they still run.
        ``wait``: return once every thread has ended."""
        with self._lock:
            self._closed = True
            if cancel:
                self._waiting.clear()
            idle, self._idle = self._idle, []
        for t in idle:
            t.job = None
            t.wake.release()
        if wait:
            for t in self._all:
                assert t.thread is not None
                if t.thread is not threading.current_thread():
                    t.thread.join()
