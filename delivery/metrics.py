"""Prometheus metrics of the delivery stage (no addresses or message ids in labels).

The tiered consumer's (in flight, commits, retry backlog, dead letters) are
:mod:`mailjournal.consumer.metrics`, the SMTP client's and the attempts'
:mod:`mailjournal.smtp.metrics`: the relay exports them too."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mailjournal.consumer.metrics import DEAD_LETTERS

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
NDRS = Counter(
    "mailjournal_delivery_ndrs_total",
    "NDRs created for journal copies that failed permanently or expired, by direction",
    ["direction", "reason"],  # reason: permanent, expired
)

# -- per route (delivery.routes; the smart host is route "default") -------------------------

ROUTE_QUEUED = Gauge(
    "mailjournal_delivery_route_queued",
    "Copies waiting for a session of the route",
    ["route"],
    multiprocess_mode="livesum",
)
ROUTE_INFLIGHT = Gauge(
    "mailjournal_delivery_route_inflight",
    "Copies in an SMTP transaction on the route",
    ["route"],
    multiprocess_mode="livesum",
)
ROUTE_ATTEMPTS = Counter(
    "mailjournal_delivery_route_attempts_total",
    "Attempts on the route by result (delivered, transient, permanent; deferred: not attempted "
    "because the route's sessions and waiters were full)",
    ["route", "result"],
)
ROUTE_TLS_FAILURES = Counter(
    "mailjournal_delivery_route_tls_failures_total",
    "Sessions of the route that failed in STARTTLS (not offered when required, handshake, "
    "certificate verification, pinning)",
    ["route"],
)

# series at 0 from the start, so rate()/increase() and alerts see the first event
for _reason in ("ndr_failed", "ndr_expired", "no_ndr_address"):
    DEAD_LETTERS.labels(_reason)
for _direction in ("inbound", "outbound", "internal"):
    for _why in ("permanent", "expired"):
        NDRS.labels(_direction, _why)
