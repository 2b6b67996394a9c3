"""Offsets of one assigned partition: which records are in flight, what may be committed."""

from __future__ import annotations

from collections import deque


class PartitionState:
    """Offsets of one assigned partition: which records are in flight, what may be committed."""

    __slots__ = ("base", "committed", "done", "next_offset", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # offsets handed over, in order
        self.done: set[int] = set()  # finished offsets not yet at the head of ``pending``
        self.next_offset: int | None = None  # after the last record handed over
        self.committed: int | None = None
        self.base: int | None = None  # the first offset handed over (before any commit)

    def add(self, offset: int) -> None:
        if self.base is None:
            self.base = offset
        self.pending.append(offset)
        self.next_offset = offset + 1

    def skip(self, offset: int) -> None:
        """A record that needed no work (final at once)."""
        self.add(offset)
        self.finish(offset)

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())

    def rewind(self, offset: int) -> None:
        """The record at ``offset`` will be fetched again (a retry head not yet due)."""
        self.next_offset = offset

    def position(self) -> int | None:
        """The offset to commit: the lowest record not final, or the one after the last."""
        return self.pending[0] if self.pending else self.next_offset

    @property
    def inflight(self) -> int:
        return len(self.pending)

    @property
    def uncommitted(self) -> int:
        """Records handed over since the last commit, finished or not: what a crash now would
        hand over again (offsets, so a transaction marker in between counts too)."""
        start = self.committed if self.committed is not None else self.base
        if start is None or self.next_offset is None:
            return 0
        return max(0, self.next_offset - start)
