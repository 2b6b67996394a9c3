"""Blocking client calls with a deadline, run on one long-lived thread.

librdkafka's transactional calls can block past their own timeout (librdkafka issues 5456,
5511), and a thread inside one cannot be interrupted. So each call runs on a helper thread and
the caller waits for it with a deadline. The helper is kept from call to call: a thread started
per call (three per transaction: begin, offsets, commit) cost the journal worker about a fifth
of its CPU per 1 KB message. A helper that overruns a deadline is abandoned, still inside its
call (a daemon, it does not hold up the process's exit), and the next call gets a new one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Stuck(Exception):
    """The call did not return within its deadline; its thread is left behind."""


class _Call(Generic[T]):
    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class DeadlineThread:
    """Runs one call at a time for one caller thread (not thread-safe itself)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call[Any] | None] | None = None
        self.threads_started = 0

    def call(self, fn: Callable[..., T], args: tuple[Any, ...], seconds: float) -> T:
        """``fn(*args)``; its exception is raised here. :class:`Stuck` after ``seconds``."""
        calls = self._calls
        if calls is None:
            calls = self._calls = queue.SimpleQueue()
            self.threads_started += 1
            threading.Thread(
                target=_serve,
                args=(calls,),
                name=f"{self._name}-{self.threads_started}",
                daemon=True,
            ).start()
        job: _Call[T] = _Call(fn, args)
        calls.put(job)
        if not job.done.wait(seconds):
            calls.put(None)  # should the call ever return, its thread then ends
            self._calls = None
            raise Stuck
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def close(self) -> None:
        """End the helper once it is idle (a stuck one ends if its call ever returns)."""
        if self._calls is not None:
            self._calls.put(None)
            self._calls = None


def _serve(calls: queue.SimpleQueue[_Call[Any] | None]) -> None:
    while (job := calls.get()) is not None:
        try:
            job.result = job.fn(*job.args)
        except BaseException as exc:
            job.error = exc
        finally:
            job.done.set()
        del job  # hold no finished call's arguments while waiting for the next
