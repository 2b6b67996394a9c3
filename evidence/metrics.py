"""Prometheus metrics of the receipt writer (docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from evidence.verify import PROBLEM_KINDS

RECEIPTS_WRITTEN = Counter(
    "mailjournal_evidence_receipts_written_total",
    "Journal receipts committed to the receipts topic",
)
CHECKPOINTS_WRITTEN = Counter(
    "mailjournal_evidence_checkpoints_written_total",
    "Signed chain checkpoints committed to the evidence topic",
)
RECEIPT_LAG = Histogram(
    "mailjournal_evidence_receipt_lag_seconds",
    "From the last final outcome of a message's copies (its acceptance when none was owed) "
    "to its receipt",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
PENDING = Gauge(
    "mailjournal_evidence_pending_messages",
    "Messages seen by the writer whose receipt is not written yet",
)
VERIFICATION_FAILURES = Counter(
    "mailjournal_evidence_verification_failures_total",
    "Problems found by the writer's check of the chain heads it restores at start",
    ["kind"],
)
# a series per kind at 0 from the start, so increase() and the alert see the first failure
for _kind in PROBLEM_KINDS:
    VERIFICATION_FAILURES.labels(_kind)
TRANSACTIONS = Counter("mailjournal_evidence_transactions_total", "Writer transactions", ["result"])
