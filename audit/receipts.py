"""Receipts overdue: accepted messages whose journal copies are all final but which have no
signed receipt (docs/evidence.md) ``evidence.receipt_overdue_seconds`` after the last of them
became final (after acceptance, for a message that owed no copy). The receipt writer being
down delays receipts; this names every message that waits too long."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from audit.reconcile import FINAL, Gap, Reconciler
from mailjournal.config import Config

GAP_KIND = "receipt-overdue"


def overdue(rec: Reconciler, receipted: set[str], now_ms: int, overdue_ms: int) -> list[Gap]:
    """Pure: the messages of ``rec`` without a receipt (``receipted``: event ids that have
    one) past the deadline. A message with a copy not yet final is not counted here (the
    audit's other gaps cover a copy that never ends)."""
    out = []
    for event_id, msg in rec.messages.items():
        if event_id in receipted:
            continue
        copies = [rec.copies[c] for c in rec.by_event.get(event_id, ())]
        if any(c.status not in FINAL for c in copies):
            continue
        final_at = max((c.last_at for c in copies), default=msg.received_at)
        late = now_ms - final_at - overdue_ms
        if late > 0:
            out.append(
                Gap(
                    GAP_KIND,
                    event_id,
                    None,
                    f"no journal receipt {(now_ms - final_at) // 1000} s after its copies were "
                    "final (is the receipt writer running?)",
                )
            )
    return out


def receipted_events(
    cfg: Config,
    since_ms: int | None,
    read: Callable[[Config, str, int | None], Iterable[tuple[dict[str, bytes], bytes, str]]],
) -> set[str]:
    from schemas import decode

    out = set()
    for _headers, value, _where in read(cfg, cfg.kafka.topics.receipts.name, since_ms):
        try:
            out.add(str(decode(value, "JournalReceipt")["event_id"]))
        except Exception:  # a record that is not a receipt is no receipt
            continue
    return out
