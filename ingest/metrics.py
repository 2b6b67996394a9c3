"""Prometheus metrics of the ingest stage. No addresses or message ids in labels: listener names,
SMTP commands, refusal reasons and reply classes only (bounded sets).

Import this module only after :func:`mailjournal.metrics.prepare_multiprocess` when running
several workers: prometheus-client picks the multiprocess value class when a metric is created.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge(
    "mailjournal_ingest_open_connections",
    "SMTP connections open now",
    ["listener"],
    multiprocess_mode="livesum",
)
CONNECTIONS_TOTAL = Counter(
    "mailjournal_ingest_connections_total", "SMTP connections accepted", ["listener"]
)
REFUSALS = Counter(
    "mailjournal_ingest_refusals_total",
    "Refusals by SMTP command (CONNECT, MAIL, RCPT, DATA, AUTH, ...), reason and reply class",
    ["listener", "command", "reason", "reply_class"],
)
MESSAGES_ACCEPTED = Counter(
    "mailjournal_ingest_messages_accepted_total",
    "Messages answered 250 after Kafka acknowledged their event",
    ["listener"],
)
MESSAGES_REFUSED = Counter(
    "mailjournal_ingest_messages_refused_total",
    "Messages refused at or after DATA, by reason and reply class",
    ["listener", "reason", "reply_class"],
)
RECEIVED_BYTES = Counter(
    "mailjournal_ingest_received_bytes_total",
    "Bytes received in DATA (as sent, terminator included)",
    ["listener"],
)
MESSAGE_SIZE = Histogram(
    "mailjournal_ingest_message_size_bytes",
    "Size of accepted messages",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
KAFKA_ACK = Histogram(
    "mailjournal_ingest_kafka_ack_seconds",
    "Time from produce to Kafka's delivery report (acks=all)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LOOP_LAG = Histogram(
    "mailjournal_ingest_event_loop_lag_seconds",
    "How late a worker's event loop ran a 50 ms timer: what every session on it waits",
    buckets=_LAG_BUCKETS,
)
LOOP_BUSY_LAG = Histogram(
    "mailjournal_ingest_event_loop_busy_lag_seconds",
    "The part of the event-loop lag its thread spent on CPU (its own work, not CPU starvation)",
    buckets=_LAG_BUCKETS,
)
INFLIGHT_MESSAGES = Gauge(
    "mailjournal_ingest_inflight_messages",
    "Messages between DATA and the final reply",
    multiprocess_mode="livesum",
)
INFLIGHT_BYTES = Gauge(
    "mailjournal_ingest_inflight_bytes",
    "Bytes held by messages between DATA and the final reply",
    multiprocess_mode="livesum",
)
DIRECTORY_LOOKUPS = Counter(
    "mailjournal_ingest_directory_lookups_total",
    "Directory lookups of recipient verification and sender-login binding, by backend and "
    "result (cache_hit, found, not_found, error)",
    ["backend", "result"],
)
DIRECTORY_LATENCY = Histogram(
    "mailjournal_ingest_directory_lookup_seconds",
    "Latency of ingest's directory lookups that reached the backend",
    ["backend"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DIRECTORY_RELOADS = Counter(
    "mailjournal_ingest_directory_reloads_total",
    "File directory reloads in ingest by result (ok, error)",
    ["result"],
)
PROXY_PEER_REFUSED = Counter(
    "mailjournal_ingest_proxy_peer_refused_total",
    "Connections to a PROXY listener from a peer outside proxy_protocol_peers, closed unread",
    ["listener"],
)
ERROR_DELAYS = Counter(
    "mailjournal_ingest_error_delays_total",
    "Error replies delayed past the soft error limit (error_sleep_seconds each)",
    ["listener"],
)
