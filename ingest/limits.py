"""Session and client limits of ingest, after Postfix smtpd's: pure counting, no I/O.

The server (:mod:`ingest.server`) owns the clock, the replies and the sockets; these classes only
count and decide, so each rule is unit-tested with a fake clock (``now`` is always passed in,
``loop.time()`` in the server). What each one mirrors:

- :class:`SessionCounters`: ``smtpd_junk_command_limit`` (NOOP, RSET, VRFY, ETRN, HELP) and
  ``smtpd_soft_error_limit`` / ``smtpd_hard_error_limit`` / ``smtpd_error_sleep_time``; both
  counts start again after a delivered message ("errors without delivering mail").
- :class:`DataRate`: ``smtpd_min_data_rate``: a DATA phase earns time in proportion to the bytes
  it delivers, after a grace period.
- :class:`ClientRate`: anvil's ``smtpd_client_connection_rate_limit``: connections per client
  address in a fixed window started by its first connection.
- :class:`AuthFailures`: failed AUTH per client address across connections; at the limit AUTH is
  refused until the window that the first counted failure opened has passed.

Counters per client address live in one ingest worker process (as anvil lives in one Postfix
instance): with ``--workers N`` a client may reach N times a per-client limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.policy import Reply

JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "ETRN", "HELP"})

TOO_MANY_JUNK = Reply(421, "4.7.0", "Too many junk commands, closing", "junk_commands")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing", "hard_errors")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session lifetime exceeded, closing", "session_lifetime")
DATA_TOO_SLOW = Reply(421, "4.4.2", "Data rate below the minimum, closing connection", "data_rate")
CONNECTION_RATE = Reply(
    421,
    "4.7.0",
    "Too many connections from your address per minute, try again later",
    "connection_rate",
)
AUTH_THROTTLED = Reply(
    454,
    "4.7.0",
    "Too many authentication failures from your address, try again later",
    "auth_throttled",
)


@dataclass(frozen=True, slots=True)
class ErrorVerdict:
    delay: float  # seconds to wait before the reply (0: none)
    close: bool  # answer TOO_MANY_ERRORS instead and close


class SessionCounters:
    """Junk commands and errors of one SMTP session."""

    def __init__(self, junk_limit: int, soft_limit: int, hard_limit: int, sleep: float):
        self.junk_limit = junk_limit
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit
        self.sleep = sleep
        self.junk = 0
        self.errors = 0

    def command(self, verb: str) -> bool:
        """Count a command; True when it is one junk command too many (421 and close)."""
        if verb not in JUNK_COMMANDS:
            return False
        self.junk += 1
        return self.junk > self.junk_limit

    def error(self) -> ErrorVerdict:
        """Count an error reply: the delay before it, or the end of the session at the hard
        limit (the error that reaches it is answered 421 instead)."""
        self.errors += 1
        if self.errors >= self.hard_limit:
            return ErrorVerdict(0.0, True)
        return ErrorVerdict(self.sleep if self.errors > self.soft_limit else 0.0, False)

    def delivered(self) -> None:
        """A message was accepted: the client is a working sender, the counts start again."""
        self.junk = 0
        self.errors = 0


class DataRate:
    """``min_rate`` bytes per second over one DATA phase, after ``grace`` seconds: the phase
    may last ``grace + received / min_rate`` seconds from its start (0 = no minimum)."""

    def __init__(self, min_rate: int, grace: float, started: float):
        self.min_rate = min_rate
        self.grace = grace
        self.started = started

    def deadline(self, received: int) -> float | None:
        """When the phase is too slow unless more bytes arrive; None without a minimum."""
        if self.min_rate <= 0:
            return None
        return self.started + self.grace + received / self.min_rate

    def too_slow(self, received: int, now: float) -> bool:
        deadline = self.deadline(received)
        return deadline is not None and now >= deadline


class ClientRate:
    """New connections per client address: at most ``limit`` per ``window`` seconds, the window
    opened by the address's first connection in it (0 = no limit)."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._seen: dict[str, tuple[float, int]] = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        # forget windows that are over, so a scan from many addresses does not grow the table
        if now >= self._next_sweep:
            self._seen = {ip: v for ip, v in self._seen.items() if now - v[0] < self.window}
            self._next_sweep = now + self.window

    def connect(self, ip: str, now: float) -> bool:
        """Count a connection from ``ip``; False when it is over the limit."""
        if self.limit <= 0:
            return True
        self._sweep(now)
        start, count = self._seen.get(ip, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        self._seen[ip] = (start, count)
        return count <= self.limit

    def __len__(self) -> int:
        return len(self._seen)


class AuthFailures:
    """Failed AUTH attempts per client address, across its connections."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._failures: dict[str, tuple[float, int]] = {}
        self._next_sweep = 0.0

    def _current(self, ip: str, now: float) -> int:
        start, count = self._failures.get(ip, (now, 0))
        if now - start >= self.window:
            self._failures.pop(ip, None)
            return 0
        return count

    def blocked(self, ip: str, now: float) -> bool:
        """True while ``ip`` has used up its failures in the current window."""
        return self._current(ip, now) >= self.limit

    def failed(self, ip: str, now: float) -> None:
        if now >= self._next_sweep:
            self._failures = {k: v for k, v in self._failures.items() if now - v[0] < self.window}
            self._next_sweep = now + self.window
        count = self._current(ip, now)
        start = self._failures[ip][0] if count else now
        self._failures[ip] = (start, count + 1)

    def __len__(self) -> int:
        return len(self._failures)
