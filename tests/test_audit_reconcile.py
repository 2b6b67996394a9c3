"""The audit's bookkeeping (pure): which situations are gaps, which are pending, which are fine."""

from __future__ import annotations

from audit.reconcile import Reconciler, parse_time

NOW = 10_000_000
GRACE = 60_000
EXPIRY = 3_600_000


def report(rec: Reconciler):  # type: ignore[no-untyped-def]
    return rec.report(NOW, GRACE, EXPIRY)


def test_delivered_copies_leave_no_gap() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1", "c2"])
    for c in ("c1", "c2"):
        rec.add_copy(c, "e1")
        rec.add_outcome(c, "e1", "JOURNAL", "RETRYING", NOW - 100_000, None)
        rec.add_outcome(c, "e1", "JOURNAL", "DELIVERED", NOW - 90_000, None)
    r = report(rec)
    assert r.gaps == [] and r.states["DELIVERED"] == 2 and not r.has_gaps()


def test_missing_copy_after_grace_is_a_gap_but_not_before() -> None:
    rec = Reconciler()
    rec.add_message("old", NOW - 120_000, ["c1"])
    rec.add_message("new", NOW - 1_000, ["c2"])
    r = report(rec)
    assert [(g.kind, g.event_id) for g in r.gaps] == [("not-journaled", "old")]
    assert r.states["AWAITING_JOURNAL"] == 1 and r.oldest_pending_ms == NOW - 1_000


def test_copy_without_outcome_is_a_gap_after_grace() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"])
    rec.add_copy("c1", "e1")
    r = report(rec)
    assert [g.kind for g in r.gaps] == ["no-outcome"] and r.has_gaps()


def test_copy_emitted_twice_is_a_gap() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"])
    rec.add_copy("c1", "e1")
    rec.add_copy("c1", "e1")
    rec.add_outcome("c1", "e1", "JOURNAL", "DELIVERED", NOW - 90_000, None)
    assert [g.kind for g in report(rec).gaps] == ["duplicate-copy"]


def test_duplicate_deliveries_are_listed_not_gaps_unless_strict() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"])
    rec.add_copy("c1", "e1")
    rec.add_outcome("c1", "e1", "JOURNAL", "DELIVERED", NOW - 90_000, None)
    rec.add_outcome("c1", "e1", "JOURNAL", "DELIVERED", NOW - 80_000, None)
    r = report(rec)
    assert r.duplicates == [("c1", 2)] and not r.has_gaps()
    assert r.has_gaps(strict_duplicates=True)


def test_retrying_is_pending_until_expiry() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"])
    rec.add_copy("c1", "e1")
    rec.add_outcome("c1", "e1", "JOURNAL", "RETRYING", NOW - 100_000, None)
    r = report(rec)
    assert r.gaps == [] and r.states["RETRYING"] == 1
    stuck = rec.report(NOW + EXPIRY + GRACE, GRACE, EXPIRY)
    assert [g.kind for g in stuck.gaps] == ["stuck"]


def test_late_retry_record_does_not_undo_a_final_outcome() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"])
    rec.add_copy("c1", "e1")
    rec.add_outcome("c1", "e1", "JOURNAL", "DELIVERED", NOW - 90_000, None)
    rec.add_outcome("c1", "e1", "JOURNAL", "RETRYING", NOW - 80_000, None)
    assert report(rec).states == {"DELIVERED": 1}


def test_ndr_sent_needs_a_final_ndr() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"])
    rec.add_copy("c1", "e1")
    rec.add_outcome("c1", "e1", "JOURNAL", "NDR_SENT", NOW - 90_000, "c1.ndr")
    assert [g.kind for g in report(rec).gaps] == ["ndr-pending"]
    rec.add_copy("c1.ndr", "e1", "NDR")
    rec.add_outcome("c1.ndr", "e1", "NDR", "DEAD_LETTERED", NOW - 80_000, None)
    r = report(rec)
    assert r.gaps == [] and r.states["NDR_SENT"] == 1 and r.states["DEAD_LETTERED"] == 1


def test_message_owing_nothing_is_fine_and_unexpected_copies_are_noted() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, [])
    rec.add_copy("cx", "e1")
    rec.add_outcome("cx", "e1", "JOURNAL", "DELIVERED", NOW - 90_000, None)
    r = report(rec)
    assert r.gaps == [] and r.unexpected == ["cx"]


def test_outcomes_of_messages_outside_the_window_are_ignored() -> None:
    rec = Reconciler()
    rec.add_outcome("c9", "e9", "JOURNAL", "DELIVERED", NOW, None)
    assert report(rec).states == {}


def test_parse_time() -> None:
    assert parse_time(None) is None
    assert parse_time("2026-01-01T00:00:00Z") == 1767225600000
    assert parse_time("2026-01-01T00:00:00") == 1767225600000
    ago = parse_time("1h")
    assert ago is not None and ago < parse_time("1m")  # type: ignore[operator]
