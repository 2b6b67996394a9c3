"""Prometheus metrics of the tiered consumer, exported by every stage that runs on it (delivery,
relay: one process each). The names keep the ``mailjournal_delivery_`` prefix they had when the
relay was a mode of the delivery worker: dashboards and alerts know them by it."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

INFLIGHT = Gauge(
    "mailjournal_delivery_inflight",
    "Records consumed whose outcome is not yet durable",
    ["source"],  # journal, retry
    multiprocess_mode="livesum",
)
INFLIGHT_BYTES = Gauge(
    "mailjournal_delivery_inflight_bytes",
    "Bytes of the records consumed and not yet finished: held in memory, bounded by "
    "max_inflight_bytes",
    multiprocess_mode="livesum",
)
COMMITS = Counter("mailjournal_delivery_commits_total", "Offset commits by result", ["result"])
RETRY_WAITING = Gauge(
    "mailjournal_delivery_retry_waiting",
    "Copies waiting on the retry tiers of this worker's partitions (end offset minus position)",
    ["tier"],
)
DEAD_LETTERS = Counter(
    "mailjournal_delivery_dead_letters_total",
    "Records put on the dead-letter topic",
    ["reason"],  # ndr_failed, ndr_expired, no_ndr_address, undecodable
)
# a series at 0 from the start, so rate()/increase() and alerts see the first poison record
DEAD_LETTERS.labels("undecodable")
PRODUCED_AGAIN = Counter(
    "mailjournal_delivery_produced_again_total",
    "Results produced again after their delivery failed retriably (Kafka away past "
    "delivery.timeout.ms): the stage stays up through an outage of any length",
)
SKIPPED_FINAL = Counter(
    "mailjournal_delivery_skipped_final_total",
    "Records a new partition owner skipped because the committed progress note says they were "
    "final already (finished behind a stuck head before a crash or a rebalance)",
)
