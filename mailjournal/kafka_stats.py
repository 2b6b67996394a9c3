"""librdkafka statistics as Prometheus gauges: consumer lag per partition, producer queues, brokers.

librdkafka emits a JSON document every ``statistics.interval.ms`` through ``stats_cb``, served by
the client's own ``poll()``/``consume()``/``flush()``. :func:`stats_config` returns the two
properties that turn this on; every producer and consumer config built in
:mod:`mailjournal.kafka` includes them, labelled with the client's role (the stage).

Consumer lag here is *records the application has not yet been handed*: end offset (the last
stable offset under ``read_committed``, else the high watermark) minus the position. librdkafka's
own ``consumer_lag`` field is computed from the committed offset it knows of, which a
transactional consumer (the journal worker commits through ``send_offsets_to_transaction``) never
learns: it stays -1 there. The lag KEDA computes from committed offsets is this lag plus the
records in flight.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_MS = 10_000
"""Override with ``[kafka].properties."statistics.interval.ms"`` (0 turns statistics off)."""

_INVALID = -1001  # librdkafka's RD_KAFKA_OFFSET_INVALID in statistics


@dataclass(frozen=True)
class StatsSample:
    """What one statistics document says, reduced to what we export."""

    client_type: str  # "producer" or "consumer"
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    queue_messages: int = 0
    queue_bytes: int = 0
    prefetch_messages: int = 0
    prefetch_bytes: int = 0
    brokers_up: int = 0
    brokers: int = 0


def _position(part: dict[str, Any]) -> int | None:
    """Where the application reads next: after the last record handed out, else the committed
    offset, else the log start (the stages consume from ``earliest``)."""
    for key in ("app_offset", "committed_offset", "lo_offset"):
        value = part.get(key, _INVALID)
        if isinstance(value, int) and value >= 0:
            return value
    return None


def parse_stats(document: str | bytes | dict[str, Any]) -> StatsSample:
    """Reduce a librdkafka statistics document (pure; raises ValueError on a malformed one)."""
    stats = json.loads(document) if isinstance(document, str | bytes) else document
    if not isinstance(stats, dict) or "type" not in stats:
        raise ValueError("not a librdkafka statistics document")
    client_type = str(stats["type"])
    lag: dict[tuple[str, int], int] = {}
    prefetch_messages = prefetch_bytes = 0
    if client_type == "consumer":
        for topic, tstats in (stats.get("topics") or {}).items():
            for pid, part in (tstats.get("partitions") or {}).items():
                partition = int(pid)
                # fetched and not yet handed to the stage: every partition's fetch queue is
                # forwarded to the one consumer queue, and each reports that queue's size
                # (measured: 36 partitions, one value), so the largest is the total
                prefetch_messages = max(prefetch_messages, int(part.get("fetchq_cnt", 0)))
                prefetch_bytes = max(prefetch_bytes, int(part.get("fetchq_size", 0)))
                # -1 is librdkafka's internal unassigned-partition queue; desired=False is a
                # partition of a subscribed topic that this member is not assigned
                if partition < 0 or not part.get("desired"):
                    continue
                end = part.get("ls_offset", _INVALID)
                if not isinstance(end, int) or end < 0:
                    end = part.get("hi_offset", _INVALID)
                position = _position(part)
                if isinstance(end, int) and end >= 0 and position is not None:
                    lag[(topic, partition)] = max(0, end - position)
    # logical entries such as "GroupCoordinator" have nodeid -1: count real brokers only
    brokers = [b for b in (stats.get("brokers") or {}).values() if b.get("nodeid", -1) >= 0]
    return StatsSample(
        client_type=client_type,
        lag=lag,
        queue_messages=int(stats.get("msg_cnt", 0)) if client_type == "producer" else 0,
        queue_bytes=int(stats.get("msg_size", 0)) if client_type == "producer" else 0,
        prefetch_messages=prefetch_messages,
        prefetch_bytes=prefetch_bytes,
        brokers_up=sum(1 for b in brokers if b.get("state") == "UP"),
        brokers=len(brokers),
    )


_GAUGES: dict[str, Any] = {}


def gauges() -> dict[str, Any]:
    """The gauges, created on first use: the ingest workers' multiprocess mode must be set up
    before prometheus-client metrics are created."""
    if not _GAUGES:
        from prometheus_client import Gauge

        _GAUGES.update(
            lag=Gauge(
                "mailjournal_kafka_consumer_lag",
                "Records of an assigned partition not yet handed to the stage (end offset - "
                "position), from librdkafka statistics",
                ["stage", "topic", "partition"],
                multiprocess_mode="livemax",
            ),
            queue_messages=Gauge(
                "mailjournal_kafka_producer_queue_messages",
                "Records in the producer's queues, not yet acknowledged by Kafka",
                ["stage"],
                multiprocess_mode="livesum",
            ),
            queue_bytes=Gauge(
                "mailjournal_kafka_producer_queue_bytes",
                "Bytes of the records in the producer's queues",
                ["stage"],
                multiprocess_mode="livesum",
            ),
            prefetch_messages=Gauge(
                "mailjournal_kafka_consumer_prefetch_messages",
                "Records librdkafka has fetched and not yet handed to the stage",
                ["stage"],
                multiprocess_mode="livesum",
            ),
            prefetch_bytes=Gauge(
                "mailjournal_kafka_consumer_prefetch_bytes",
                "Bytes of those records (bounded by queued.max.messages.kbytes, plus one fetch)",
                ["stage"],
                multiprocess_mode="livesum",
            ),
            brokers_up=Gauge(
                "mailjournal_kafka_brokers_up",
                "Brokers this client has an open connection to (state UP)",
                ["stage", "client"],
                multiprocess_mode="livemin",
            ),
        )
    return _GAUGES


class StatsCollector:
    """A ``stats_cb`` that applies each document to the gauges of one stage.

    Never raises: an exception in ``stats_cb`` would surface from the stage's ``poll()``."""

    def __init__(self, stage: str):
        self.stage = stage
        self._lag_labels: set[tuple[str, int]] = set()

    def __call__(self, document: str) -> None:
        try:
            self.apply(parse_stats(document))
        except Exception:  # a metrics problem must never stop the pipeline
            log.exception("librdkafka statistics of %s not exported", self.stage)

    def apply(self, sample: StatsSample) -> None:
        g = gauges()
        g["brokers_up"].labels(self.stage, sample.client_type).set(sample.brokers_up)
        if sample.client_type == "producer":
            g["queue_messages"].labels(self.stage).set(sample.queue_messages)
            g["queue_bytes"].labels(self.stage).set(sample.queue_bytes)
            return
        if sample.client_type != "consumer":
            return
        g["prefetch_messages"].labels(self.stage).set(sample.prefetch_messages)
        g["prefetch_bytes"].labels(self.stage).set(sample.prefetch_bytes)
        for (topic, partition), lag in sample.lag.items():
            g["lag"].labels(self.stage, topic, str(partition)).set(lag)
        # partitions revoked since the last document: drop their series (0 first, because the
        # multiprocess value files keep the last value of a removed child)
        for topic, partition in self._lag_labels - sample.lag.keys():
            child = (self.stage, topic, str(partition))
            g["lag"].labels(*child).set(0)
            g["lag"].remove(*child)
        self._lag_labels = set(sample.lag)


def stats_config(stage: str, interval_ms: int = DEFAULT_INTERVAL_MS) -> dict[str, Any]:
    """librdkafka properties that export this client's statistics as ``stage``'s gauges."""
    callback: Callable[[str], None] = StatsCollector(stage)
    return {"statistics.interval.ms": interval_ms, "stats_cb": callback}
