"""Prometheus metrics of the relay stage (originals forwarded onward; no addresses or message
ids in labels). Its SMTP attempts also count in ``mailjournal_delivery_attempts_total{kind="relay"}``
(:mod:`mailjournal.smtp.metrics`), its records in the tiered consumer's
(:mod:`mailjournal.consumer.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
