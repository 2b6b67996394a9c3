"""Consumer lag of one partition: its end offset minus a position (the journal worker's
per-partition gauge, the tiered consumer's retry backlog)."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition


def partition_lag(consumer: Consumer, position: TopicPartition, *, cached: bool) -> int | None:
    """Records between ``position.offset`` and the end of its partition; None while either is
    unknown (nothing fetched yet). Raises ``KafkaException`` when the broker does not answer:
    the caller decides whether one partition's silence spoils the whole reading.

    ``cached``: the watermarks the fetches keep fresh, without a request to the broker; they go
    stale while a partition is paused."""
    if position.offset < 0:
        return None
    _, high = consumer.get_watermark_offsets(position, timeout=1.0, cached=cached)
    if high < 0:
        return None
    return max(0, high - position.offset)
