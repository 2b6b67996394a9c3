"""Named fault points: deterministic crash sites for the tests (FoundationDB / Jepsen style).

A stage calls ``fault_point("journal.txn.before_commit")`` where a crash matters. Unarmed (the
production case) the call is one module-level check. A test arms points for a child process
through the environment::

    MAILJOURNAL_FAULT=name:action[@N][,name2:action2[@N]...]
    MAILJOURNAL_FAULT_LOG=/path/file     # optional: one "name pid" line per point that fired

Actions: ``kill`` (SIGKILL self), ``pause`` (SIGSTOP self: the test inspects the frozen state,
then kills or continues it), ``exit`` (``os._exit(EXIT_FAULT)``), ``raise`` (:class:`FaultInjected`).
``@N`` fires on the N-th hit of the point in the process (default the first), once.

Before it acts, a point writes one line to stderr and, with ``MAILJOURNAL_FAULT_LOG``, appends
``name pid`` to that file with flush and fsync, so a test waits on the fact that the process got
exactly there. A point already named in that file is not armed again: a stage restarted by the
supervisor with the same environment does not crash at the same place forever.

An armed process says so loudly on stderr at start; a bad specification is refused at start
with exit status 2, like any other configuration error.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mailjournal.exits import EXIT_CONFIG, EXIT_FAULT

__all__ = [
    "ACTIONS",
    "ENV",
    "LOG_ENV",
    "POINTS",
    "FaultInjected",
    "FaultSpec",
    "FaultSpecError",
    "Faults",
    "fault_point",
    "parse_spec",
]

ENV = "MAILJOURNAL_FAULT"
LOG_ENV = "MAILJOURNAL_FAULT_LOG"
ACTIONS = ("kill", "pause", "exit", "raise")

# every point a stage calls, and where (docs/reliability.md, "Fault points", has the guarantee
# each one tests); a name outside this list is refused, so a typo cannot leave a test waiting
POINTS: Mapping[str, str] = {
    "ingest.after_ack": "ingest: Kafka acknowledged the event, the 250 not yet written",
    "journal.txn.after_produce": "journal worker: batch copies produced, offsets not yet sent",
    "journal.txn.before_commit": "journal worker: offsets sent, commit_transaction not called",
    "replay.txn.after_produce": "replay: batch's replay copies produced, offsets not yet sent",
    "replay.txn.before_commit": "replay: offsets sent, commit_transaction not called",
    "delivery.after_remote_250": "delivery: remote 250 received, outcome not yet produced",
    "relay.between_recipients": "relay: one recipient group sent, the next not yet",
    "dlq.replay.mid_batch": "dlq replay: one dead letter re-produced, transaction open",
    "audit.mid_scan": "audit: one record of the messages topic read, the scan not done",
    "evidence.txn.mid_batch": "receipt writer: the batch's first receipt produced, the rest not",
    "evidence.txn.before_commit": "receipt writer: receipts and offsets sent, commit not called",
}

_SPEC = re.compile(r"^(?P<name>[a-z0-9_.]+):(?P<action>[a-z]+)(?:@(?P<hit>\d+))?$")


class FaultSpecError(ValueError):
    """``MAILJOURNAL_FAULT`` cannot be understood."""


class FaultInjected(RuntimeError):
    """Raised by a point armed with ``raise``."""


@dataclass(frozen=True)
class FaultSpec:
    name: str
    action: str
    hit: int = 1

    def __str__(self) -> str:
        return f"{self.name}:{self.action}@{self.hit}"


def parse_spec(text: str, known: Iterable[str] = POINTS) -> list[FaultSpec]:
    """The points ``text`` arms (``name:action[@N]``, comma-separated). Raises FaultSpecError."""
    names = set(known)
    specs: list[FaultSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = _SPEC.match(part)
        if m is None:
            raise FaultSpecError(f"{ENV}: {part!r} is not name:action[@N]")
        name, action = m["name"], m["action"]
        if name not in names:
            raise FaultSpecError(f"{ENV}: unknown fault point {name!r} (known: {sorted(names)})")
        if action not in ACTIONS:
            raise FaultSpecError(f"{ENV}: unknown action {action!r} for {name} (one of {ACTIONS})")
        hit = int(m["hit"] or 1)
        if hit < 1:
            raise FaultSpecError(f"{ENV}: {part!r}: the hit count starts at 1")
        if any(s.name == name for s in specs):
            raise FaultSpecError(f"{ENV}: {name} armed twice")
        specs.append(FaultSpec(name, action, hit))
    if not specs:
        raise FaultSpecError(f"{ENV} is set but arms no point")
    return specs


def fired_points(log_path: str | None) -> set[str]:
    """The points a fault log says have fired already (by any process)."""
    if not log_path:
        return set()
    try:
        with open(log_path, encoding="utf-8") as f:
            return {line.split()[0] for line in f if line.strip()}
    except FileNotFoundError:
        return set()


class Faults:
    """The armed points of one process and their hit counts (thread-safe: delivery calls its
    points from worker threads)."""

    def __init__(self, specs: Iterable[FaultSpec], log_path: str | None = None):
        self.specs = {s.name: s for s in specs}
        self.log_path = log_path
        self.hits: dict[str, int] = dict.fromkeys(self.specs, 0)
        self._lock = threading.Lock()

    def due(self, name: str) -> FaultSpec | None:
        """Count a hit of ``name``; the spec when this hit is the one it fires on."""
        spec = self.specs.get(name)
        if spec is None:
            return None
        with self._lock:
            self.hits[name] += 1
            return spec if self.hits[name] == spec.hit else None

    def fire(self, spec: FaultSpec) -> None:
        pid = os.getpid()
        sys.stderr.write(f"mailjournal: FAULT POINT {spec} fired in pid {pid}\n")
        sys.stderr.flush()
        if self.log_path:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{spec.name} {pid}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        if spec.action == "kill":
            os.kill(pid, signal.SIGKILL)
        elif spec.action == "pause":
            os.kill(pid, signal.SIGSTOP)  # returns here if the test sends SIGCONT
        elif spec.action == "exit":
            os._exit(EXIT_FAULT)
        else:
            raise FaultInjected(f"fault point {spec.name} (hit {spec.hit})")


def from_environment(env: Mapping[str, str]) -> Faults | None:
    """The process's armed points, or None when unarmed. Raises FaultSpecError."""
    text = env.get(ENV, "").strip()
    if not text:
        return None
    log_path = env.get(LOG_ENV) or None
    done = fired_points(log_path)
    specs = [s for s in parse_spec(text) if s.name not in done]
    return Faults(specs, log_path) if specs else None


def _arm() -> Faults | None:
    try:
        faults = from_environment(os.environ)
    except FaultSpecError as exc:
        sys.stderr.write(f"mailjournal: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None  # a configuration error, like the others
    if faults is not None:
        armed = ", ".join(str(s) for s in faults.specs.values())
        sys.stderr.write(
            f"mailjournal: WARNING: FAULT POINTS ARMED ({armed}): this process will crash "
            f"on purpose; testing only, never in production (pid {os.getpid()})\n"
        )
        sys.stderr.flush()
    return faults


_ARMED: Faults | None = _arm()


def fault_point(name: str) -> None:
    """A crash site named ``name`` (one of :data:`POINTS`); a no-op unless armed."""
    if _ARMED is None:
        return
    spec = _ARMED.due(name)
    if spec is not None:
        _ARMED.fire(spec)
