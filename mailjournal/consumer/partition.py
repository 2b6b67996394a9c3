"""Offsets of one assigned partition: which records are in flight, what may be committed, and
the progress note committed with the offset.

Kafka's committed offset is the lowest record not yet final; everything past it that finished
would be handled again after a crash or a rebalance. A record stuck at the head (an archive that
hangs until the command timeout) would then bound the whole partition: the work a crash may
repeat grows with every record finished behind it, and the window fills. So each commit carries
a *progress note* in the offset's metadata: the end of what was handed over and the offsets
before it still in flight. The next owner of the partition starts at the committed offset and
skips every record the note says is final, the window counts only unfinished work and what
finished since the last commit, and one slow destination no longer holds back the others.

The note names the unfinished offsets, not the finished ones: offsets in between that were
never handed over (transaction markers, aborted records a ``read_committed`` consumer never
sees) count as finished, and the note stays as short as the in-flight work (at most
``max_inflight`` offsets) whatever the span behind the head. A note that does not fit in
:data:`NOTE_MAX_CHARS` is cut short at an offset still in flight: what it no longer covers is
handled again (at-least-once, never a gap). A note that does not parse, or that was written for
another committed offset, is ignored the same way.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

NOTE_PREFIX = "mj1"
# the broker refuses commits whose metadata exceeds offset.metadata.max.bytes (4096 by default)
NOTE_MAX_CHARS = 3800


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a committed progress note says: every offset in ``[start, end)`` except
    ``unfinished`` is final."""

    start: int
    end: int
    unfinished: tuple[int, ...]  # sorted

    def covers(self, offset: int) -> bool:
        if not self.start <= offset < self.end:
            return False
        i = bisect.bisect_left(self.unfinished, offset)
        return i == len(self.unfinished) or self.unfinished[i] != offset


def encode_note(start: int, end: int, unfinished: Sequence[int]) -> str:
    """The note for a commit at ``start``: offsets up to ``end`` except ``unfinished`` (sorted,
    each in ``[start, end)``) are final. Offsets are written as gaps from the previous one."""
    parts = [NOTE_PREFIX, str(start), str(end - start)]
    size = sum(len(p) for p in parts) + len(parts)
    prev = start
    for offset in unfinished:
        gap = str(offset - prev)
        if size + len(gap) + 1 > NOTE_MAX_CHARS:
            parts[2] = str(offset - start)  # cut short: claim nothing from here on
            break
        parts.append(gap)
        size += len(gap) + 1
        prev = offset
    return " ".join(parts)


def parse_note(note: str | None, committed: int) -> Recorded | None:
    """The note committed with offset ``committed``; None when there is none, it is not ours, it
    does not parse, or it was written for another offset (then nothing is skipped)."""
    if not note:
        return None
    fields = note.split(" ")
    if len(fields) < 3 or fields[0] != NOTE_PREFIX:
        return None
    try:
        start, span, *gaps = (int(f) for f in fields[1:])
    except ValueError:
        return None
    if start != committed or span <= 0 or any(g < 0 for g in gaps):
        return None
    unfinished: list[int] = []
    at = start
    for gap in gaps:
        at += gap
        if unfinished and at == unfinished[-1]:
            return None  # a repeated offset: not a note of ours
        unfinished.append(at)
    if unfinished and (unfinished[0] != start or unfinished[-1] >= start + span):
        return None  # the head is always unfinished, and every entry lies in the span
    return Recorded(start, start + span, tuple(unfinished))


class PartitionState:
    """Offsets of one assigned partition: which records are in flight, what may be committed."""

    __slots__ = (
        "base",
        "committed",
        "done",
        "finished",
        "next_offset",
        "pending",
        "recorded",
        "recorded_finished",
        "restored",
    )

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # offsets handed over, in order
        self.done: set[int] = set()  # finished offsets not yet at the head of ``pending``
        self.next_offset: int | None = None  # after the last record handed over
        self.committed: int | None = None
        self.base: int | None = None  # the first offset handed over (before any commit)
        self.finished = 0  # records finished so far (a running count)
        self.recorded_finished = 0  # ``finished`` as of the last successful commit
        self.recorded: Recorded | None = None  # the previous owner's note
        self.restored = False  # whether the committed note has been read

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
        self.finished += 1
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())

    def rewind(self, offset: int) -> None:
        """The record at ``offset`` will be fetched again (a retry head not yet due)."""
        self.next_offset = offset

    def position(self) -> int | None:
        """The offset to commit: the lowest record not final, or the one after the last."""
        return self.pending[0] if self.pending else self.next_offset

    def note(self) -> str | None:
        """The progress note to commit with :meth:`position`; None when nothing past the head is
        final."""
        if not self.done or not self.pending or self.next_offset is None:
            return None
        unfinished = [o for o in self.pending if o not in self.done]
        return encode_note(self.pending[0], self.next_offset, unfinished)

    def finished_before(self, offset: int) -> bool:
        """Whether the previous owner's note says the record at ``offset`` is final."""
        return self.recorded is not None and self.recorded.covers(offset)

    @property
    def inflight(self) -> int:
        """Records handed over and not yet committed past (finished ones behind the head too)."""
        return len(self.pending)

    @property
    def working(self) -> int:
        """Records handed over and not finished."""
        return len(self.pending) - len(self.done)

    @property
    def unrecorded(self) -> int:
        """What a crash now would hand over again: the records in flight and those finished
        since the last commit (its note covers the ones finished before)."""
        return self.working + self.finished - self.recorded_finished

    @property
    def uncommitted(self) -> int:
        """The span from the committed offset to the last record handed over (offsets, so a
        transaction marker in between counts too): what is kept in memory for the partition."""
        start = self.committed if self.committed is not None else self.base
        if start is None or self.next_offset is None:
            return 0
        return max(0, self.next_offset - start)
