"""Prometheus metrics of the journal worker (``mailjournal_journal_*``).

Labels never carry addresses or message ids: only directions, sources, reasons, backends,
results and partition numbers.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

MESSAGES_DECIDED = Counter(
    "mailjournal_journal_messages_decided_total",
    "Message events decided, by outcome (journaled, skipped, dead_lettered)",
    ["outcome"],
)
COPIES_EMITTED = Counter(
    "mailjournal_journal_copies_emitted_total",
    "Journal copies emitted (committed or not yet), by direction(s) and source(s) of the copy",
    ["direction", "source"],
)
SKIPS = Counter(
    "mailjournal_journal_skips_total",
    "Messages that owe no journal copy, by reason (loop prevention or nothing configured)",
    ["reason"],
)
PROTECTED_RECIPIENTS = Counter(
    "mailjournal_journal_protected_recipients_total",
    "Envelope recipients that are journal or NDR addresses and were therefore not journaled",
)
INVALID_JOURNAL_ADDRESSES = Counter(
    "mailjournal_journal_invalid_journal_addresses_total",
    "Directory attribute values that are not valid journal addresses (ignored, logged)",
    ["direction"],
)
DEAD_LETTERS = Counter(
    "mailjournal_journal_dead_letters_total",
    "Records sent to the dead-letter topic, by reason class",
    ["reason"],
)
HEADER_PARSE_ERRORS = Counter(
    "mailjournal_journal_header_parse_errors_total",
    "To/Cc fields that could not be parsed (their recipients typed Recipient:), by field",
    ["field"],
)
FALLBACK_DECISIONS = Counter(
    "mailjournal_journal_fallback_decisions_total",
    "Messages decided by the envelope-only fallback because the full decision raised",
)
DIRECTORY_LOOKUPS = Counter(
    "mailjournal_journal_directory_lookups_total",
    "Directory lookups by backend and result (cache_hit, found, not_found, error)",
    ["backend", "result"],
)
DIRECTORY_LATENCY = Histogram(
    "mailjournal_journal_directory_lookup_seconds",
    "Latency of directory lookups that reached the backend",
    ["backend"],
    buckets=_FAST,
)
DIRECTORY_AVAILABLE = Gauge(
    "mailjournal_journal_directory_available",
    "0 while the worker is stalled on a directory outage, else 1",
    multiprocess_mode="min",
)
DIRECTORY_OUTAGE_SECONDS = Counter(
    "mailjournal_journal_directory_outage_seconds_total",
    "Time spent waiting for the directory to come back",
)
DIRECTORY_RELOADS = Counter(
    "mailjournal_journal_directory_reloads_total",
    "File directory reloads by result (ok, error)",
    ["result"],
)
TRANSACTIONS = Counter(
    "mailjournal_journal_transactions_total",
    "Kafka transactions by result (committed, aborted)",
    ["result"],
)
TRANSACTION_COMMIT_SECONDS = Histogram(
    "mailjournal_journal_transaction_commit_seconds",
    "Latency of send_offsets_to_transaction + commit_transaction",
    buckets=_FAST,
)
BATCH_MESSAGES = Histogram(
    "mailjournal_journal_batch_messages",
    "Message events per committed transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
CONSUMER_LAG = Gauge(
    "mailjournal_journal_consumer_lag",
    "Messages not yet decided per assigned partition (high watermark - position)",
    ["partition"],
    multiprocess_mode="max",
)
KAFKA_ERRORS = Counter(
    "mailjournal_journal_kafka_errors_total",
    "Kafka errors by class (retriable, abortable, fatal, consumer, producer_replaced)",
    ["kind"],
)

DIRECTORY_AVAILABLE.set(1)
# series at 0 from the start, so rate()/increase() and alerts see the first event
for _reason in ("empty", "undecodable", "unjournalable"):
    DEAD_LETTERS.labels(_reason)
for _field in ("to", "cc"):
    HEADER_PARSE_ERRORS.labels(_field)
for _kind in ("retriable", "abortable", "fatal", "consumer"):
    KAFKA_ERRORS.labels(_kind)
