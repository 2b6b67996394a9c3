"""The progress note committed with a partition's offset (``mailjournal/consumer/partition.py``):
the next owner skips exactly the records it says are final. A note that claims an unfinished
record would lose a journal copy, so the properties run over arbitrary hand-over and finish
orders, and over arbitrary bytes as the note."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mailjournal.consumer.partition import (
    NOTE_MAX_CHARS,
    PartitionState,
    encode_note,
    parse_note,
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[PartitionState, set[int], set[int]]:
    """A partition after records were handed over (with gaps: transaction markers) and some
    finished in any order: (state, handed-over offsets, finished offsets)."""
    state = PartitionState()
    offset = draw(st.integers(0, 10**12))
    handed: list[int] = []
    for _ in range(draw(st.integers(0, 300))):
        offset += draw(st.sampled_from([1, 1, 1, 2, 50]))
        handed.append(offset)
        state.add(offset)
    order = draw(st.permutations(handed))
    finished = set(order[: draw(st.integers(0, len(order)))])
    for o in order:
        if o in finished:
            state.finish(o)
    return state, set(handed), finished


@settings(max_examples=400, deadline=None)
@given(histories())
def test_the_note_covers_finished_and_never_handed_offsets_only(
    history: tuple[PartitionState, set[int], set[int]],
) -> None:
    state, handed, finished = history
    position = state.position()
    note = state.note()
    if note is None:
        assert not state.done  # nothing final past the head
        return
    assert position is not None and state.next_offset is not None
    assert len(note) <= NOTE_MAX_CHARS
    recorded = parse_note(note, position)
    assert recorded is not None
    for o in range(position, state.next_offset):
        if recorded.covers(o):
            assert o in finished or o not in handed, o
    assert not recorded.covers(position)  # the head is in flight
    assert not recorded.covers(state.next_offset)  # nothing beyond what was handed over
    # all of what finished past the head is covered unless the note had to be cut short
    if len(note) < NOTE_MAX_CHARS - 20:
        assert all(recorded.covers(o) for o in state.done)


def test_a_long_note_is_cut_short_at_an_unfinished_offset() -> None:
    state = PartitionState()
    for o in range(0, 20_000, 2):  # every other record in flight: thousands of holes
        state.add(o)
        state.add(o + 1)
        state.finish(o + 1)
    note = state.note()
    assert note is not None and len(note) <= NOTE_MAX_CHARS
    recorded = parse_note(note, 0)
    assert recorded is not None and 0 < recorded.end < 20_000
    assert recorded.covers(1) and not recorded.covers(2)
    assert not any(recorded.covers(o) for o in range(recorded.end, 20_000))


def test_a_note_for_another_offset_or_not_ours_is_ignored() -> None:
    note = encode_note(100, 110, [100, 103])
    recorded = parse_note(note, 100)
    assert recorded is not None
    assert [o for o in range(95, 115) if recorded.covers(o)] == [
        101,
        102,
        104,
        105,
        106,
        107,
        108,
        109,
    ]
    assert parse_note(note, 99) is None  # written for another committed offset
    for bad in (
        None,
        "",
        "mj1",
        "mj2 100 10 0",
        "mj1 100 x 0",
        "mj1 100 10 1",
        "mj1 100 10 0 0",
        "mj1 100 10 0 -1",
        "mj1 100 10 0 20",
        "mj1 100 0",
        "mj1 100 -5 0",
    ):
        assert parse_note(bad, 100) is None, bad


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.integers(-5, 10**6))
def test_any_text_as_a_note_parses_or_is_ignored_without_raising(text: str, committed: int) -> None:
    recorded = parse_note(text, committed)
    if recorded is not None:
        assert recorded.start == committed and not recorded.covers(committed)


def test_the_window_counts_work_in_flight_and_finished_since_the_commit() -> None:
    state = PartitionState()
    for o in range(10):
        state.add(o)
    rng = random.Random(7)
    for o in rng.sample(range(1, 10), 9):  # everything but the head finishes
        state.finish(o)
    assert state.working == 1 and state.unrecorded == 10 and state.uncommitted == 10
    state.committed, state.recorded_finished = state.position(), state.finished  # a commit
    assert state.position() == 0 and state.unrecorded == 1  # the note has the other nine
    state.finish(0)
    assert state.position() == 10 and state.working == 0 and state.unrecorded == 1
