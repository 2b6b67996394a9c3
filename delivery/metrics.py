"""Prometheus metrics of the delivery stage (no addresses or message ids in labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS = Counter(
    "mailjournal_delivery_attempts_total",
    "SMTP delivery attempts by kind of copy and result class",
    ["kind", "result"],  # result: delivered, transient, permanent
)
END_TO_END_SECONDS = Histogram(
    "mailjournal_delivery_end_to_end_seconds",
    "From ingest's acceptance of the message (received_at) to the smart host's 250",
    ["kind"],
    buckets=(
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
        900,
        3600,
        4 * 3600,
        24 * 3600,
        48 * 3600,
    ),
)
OUTCOMES = Counter(
    "mailjournal_delivery_outcomes_total",
    "Outcome events published, by kind and status",
    ["kind", "status"],
)
RETRIES_SCHEDULED = Counter(
    "mailjournal_delivery_retries_scheduled_total",
    "Copies re-queued on a retry tier",
    ["tier"],
)
RETRY_WAITING = Gauge(
    "mailjournal_delivery_retry_waiting",
    "Copies waiting on the retry tiers of this worker's partitions (end offset minus position)",
    ["tier"],
)
NDRS = Counter(
    "mailjournal_delivery_ndrs_total",
    "NDRs created for journal copies that failed permanently or expired, by direction",
    ["direction", "reason"],  # reason: permanent, expired
)
DEAD_LETTERS = Counter(
    "mailjournal_delivery_dead_letters_total",
    "Records put on the dead-letter topic",
    ["reason"],  # ndr_failed, ndr_expired, no_ndr_address, undecodable
)
INFLIGHT = Gauge(
    "mailjournal_delivery_inflight",
    "Records consumed whose outcome is not yet durable",
    ["source"],  # journal, retry
    multiprocess_mode="livesum",
)
COMMITS = Counter("mailjournal_delivery_commits_total", "Offset commits by result", ["result"])

# series at 0 from the start, so rate()/increase() and alerts see the first event
for _reason in ("ndr_failed", "ndr_expired", "no_ndr_address", "undecodable"):
    DEAD_LETTERS.labels(_reason)
for _direction in ("inbound", "outbound", "internal"):
    for _why in ("permanent", "expired"):
        NDRS.labels(_direction, _why)

# -- relay mode (originals forwarded onward) ---------------------------------------------

RELAY_MESSAGES = Counter(
    "mailjournal_relay_messages_total",
    "Relay attempts of originals by result (per destination transaction)",
    ["result"],  # delivered, partial, retrying, failed, dsn_sent, dead_lettered
)
RELAY_LATENCY = Histogram(
    "mailjournal_relay_latency_seconds",
    "From ingest's acceptance of an original to its next hop's 250",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 4 * 3600),
)
RELAY_DSNS = Counter(
    "mailjournal_relay_dsns_total",
    "DSNs queued to original senders by action",
    ["action"],  # failed, delayed
)
