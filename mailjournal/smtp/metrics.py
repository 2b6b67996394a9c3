"""Prometheus metrics of sending copies by SMTP -- the client's sessions and the attempts --,
exported by every stage that sends (delivery and the relay) under the names they always had (no
addresses or message ids in labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SMTP_SECONDS = Histogram(
    "mailjournal_delivery_smtp_seconds",
    "SMTP round trip of one transaction (MAIL to the reply after DATA)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SMTP_CONNECTIONS = Gauge(
    "mailjournal_delivery_smtp_connections",
    "Open SMTP connections to the smart host",
    multiprocess_mode="livesum",
)
SMTP_CONNECTS = Counter(
    "mailjournal_delivery_smtp_connects_total",
    "SMTP connections opened, by result",
    ["result"],  # ok, error
)
SMTP_AUTH_WITHOUT_TLS = Counter(
    "mailjournal_delivery_smtp_auth_without_tls_total",
    "Sessions ended before AUTH because no TLS was negotiated (credentials never sent in clear)",
)

# -- what the stages sending copies count of their attempts (delivery, relay) -----------------

ATTEMPTS = Counter(
    "mailjournal_delivery_attempts_total",
    "SMTP delivery attempts by kind of copy and result class",
    ["kind", "result"],  # result: delivered, transient, permanent
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
