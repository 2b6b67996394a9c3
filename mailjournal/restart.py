"""Restart with backoff: the loop of ``mailjournal run`` (one process per stage) and of
``mailjournal ingest --workers N`` (N processes sharing the listeners' ports), written once.

The policy and the bookkeeping are plain values driven by the caller's clock, so they are tested
without processes (``tests/test_restart.py``); a child is anything with ``start`` and ``poll``.

A child that exits is started again after a delay that grows with its restarts (the last delay
repeats), so a stage that crashes at once does not spin. With ``stop_on_config`` a child that exits
with :data:`~mailjournal.exits.EXIT_CONFIG` ends the loop instead (``mailjournal run``): a stage that
refused its configuration would refuse it again, for ever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL

__all__ = ["Backoff", "Child", "RestartLoop", "Restarts"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds to wait before restart number ``n`` (0-based): ``delays[n]``, the last one repeating."""

    delays: tuple[float, ...]
    healthy_after: float | None = None
    """A child that has run this long counts as healthy: its next restart waits the first delay
    again. None: restarts count for the life of the loop."""

    def __post_init__(self) -> None:
        if not self.delays:
            raise ValueError("a backoff needs at least one delay")

    def delay(self, restarts: int) -> float:
        return self.delays[min(restarts, len(self.delays) - 1)]


@dataclass(slots=True)
class Restarts:
    """One child's restart bookkeeping, in the loop's clock (``time.monotonic`` seconds)."""

    backoff: Backoff
    count: int = 0
    """Restarts since the child was last healthy."""
    started_at: float = 0.0
    due: float | None = None
    """When the pending restart is due; None while none is pending."""

    def started(self, now: float) -> None:
        self.started_at = now
        self.due = None

    def running(self, now: float) -> None:
        healthy = self.backoff.healthy_after
        if healthy is not None and now - self.started_at > healthy:
            self.count = 0

    def exited(self, now: float) -> float:
        """Schedule the restart of a child that just exited; returns its delay."""
        delay = self.backoff.delay(self.count)
        self.due = now + delay
        self.count += 1
        return delay

    @property
    def pending(self) -> bool:
        return self.due is not None

    def is_due(self, now: float) -> bool:
        return self.due is not None and now >= self.due


class Child(Protocol):
    """A process the loop keeps running. ``str(child)`` names it in the log lines."""

    restarts: Restarts

    def start(self) -> None: ...

    def poll(self) -> int | None:
        """Its exit status once it has exited, None while it runs. Called once per exit: the
        loop asks no more until it has started the child again."""
        ...


@dataclass
class RestartLoop:
    """Keeps ``children`` running: one :meth:`step` per ``interval`` until ``stopping()``."""

    children: Sequence[Child]
    log: logging.Logger
    stop_on_config: bool = False
    """A child's exit with EXIT_CONFIG ends the loop with that status instead of a restart."""
    restart: bool = True
    """False: the first exit ends the loop (``mailjournal run --no-restart``)."""
    interval: float = 0.2
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def start_all(self) -> None:
        for child in self.children:
            self._start(child, self.clock())

    def run(self, stopping: Callable[[], bool]) -> int | None:
        """Step until ``stopping()`` (returns None) or a child's exit ends the loop (returns the
        status the caller should exit with)."""
        while not stopping():
            rc = self.step(self.clock())
            if rc is not None:
                return rc
            self.sleep(self.interval)
        return None

    def step(self, now: float) -> int | None:
        """Notice exits, schedule and perform restarts; an exit status when the loop must end."""
        for child in self.children:
            book = child.restarts
            if not book.pending:
                rc = child.poll()
                if rc is None:
                    book.running(now)
                    continue
                if rc == EXIT_CONFIG and self.stop_on_config:
                    self.log.error("%s refused the configuration (exit 2); stopping", child)
                    return EXIT_CONFIG
                if not self.restart:
                    self.log.error("%s exited with %s; stopping (--no-restart)", child, rc)
                    return EXIT_FATAL
                delay = book.exited(now)
                self.log.error("%s exited with %s; restarting in %.0f s", child, rc, delay)
            if book.is_due(now):
                self._start(child, now)
        return None

    @staticmethod
    def _start(child: Child, now: float) -> None:
        child.start()
        child.restarts.started(now)
