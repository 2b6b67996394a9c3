"""The audit's receipts-overdue check (audit/receipts.py), on the audit's own bookkeeping."""

from __future__ import annotations

from audit.receipts import GAP_KIND, overdue
from audit.reconcile import Reconciler

HOUR = 3600 * 1000


def reconciler() -> Reconciler:
    rec = Reconciler()
    rec.add_message("done", 0, ["done.c"])  # copy final at 1 h
    rec.add_copy("done.c", "done")
    rec.add_outcome("done.c", "done", "JOURNAL", "DELIVERED", HOUR, None)
    rec.add_message("open", 0, ["open.c"])  # still retrying: not the receipt writer's fault
    rec.add_copy("open.c", "open")
    rec.add_outcome("open.c", "open", "JOURNAL", "RETRYING", HOUR, None)
    rec.add_message("none", 0, [])  # owed no copy: due from its acceptance
    return rec


def test_messages_final_too_long_ago_without_a_receipt_are_named() -> None:
    gaps = overdue(reconciler(), set(), now_ms=3 * HOUR, overdue_ms=HOUR)
    assert sorted((g.kind, g.event_id) for g in gaps) == [(GAP_KIND, "done"), (GAP_KIND, "none")]
    assert (
        "7200 s after its copies were final" in next(g for g in gaps if g.event_id == "done").line()
    )


def test_receipted_or_not_yet_due_messages_are_not() -> None:
    assert overdue(reconciler(), {"done", "none"}, now_ms=3 * HOUR, overdue_ms=HOUR) == []
    # 'done' became final at 1 h: due at 2 h; 'none' accepted at 0: due at 1 h
    gaps = overdue(reconciler(), set(), now_ms=int(1.5 * HOUR), overdue_ms=HOUR)
    assert [g.event_id for g in gaps] == ["none"]
