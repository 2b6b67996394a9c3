"""Reading evidence topics back (read_committed): whole partitions, time windows, and the last
records of a partition. Used by the writer when it starts and by ``mailjournal evidence``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from mailjournal.config import Config
from mailjournal.kafka import make_consumer
from mailjournal.topic_read import read_to_ends
from schemas import default_codec

TIMEOUT = 30.0


def reader(config: Config) -> Consumer:
    return make_consumer(
        config,
        f"mailjournal-evidence-reader-{time.time_ns()}",
        role="evidence",
        extra={"enable.partition.eof": True},
    )


def partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=TIMEOUT).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"topic {topic}: {meta.error}")
    return sorted(meta.partitions)


def read_range(
    consumer: Consumer, topic: str, starts: dict[int, int]
) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    """(partition, offset, key, value) of every committed record from ``starts`` (partition ->
    offset) to the end offsets as they were when the read began."""
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)[1]
        for p in starts
    }
    todo = (TopicPartition(topic, p, o) for p, o in starts.items())
    for msg in read_to_ends(consumer, topic, todo, ends, TIMEOUT):
        key = msg.key()
        yield (
            msg.partition() or 0,
            msg.offset() or 0,
            key if isinstance(key, bytes) else None,
            msg.value(),
        )


def read_all(config: Config, topic: str) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    consumer = reader(config)
    try:
        starts = {p: OFFSET_BEGINNING for p in partitions(consumer, topic)}
        yield from read_range(consumer, topic, starts)
    finally:
        consumer.close()


def decoded(config: Config, topic: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    codec = default_codec()
    for p, _offset, _key, value in read_all(config, topic):
        if value is not None:
            yield p, codec.decode(value, name)


def read_window(
    config: Config, topic: str, name: str, since_ms: int
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Records of ``topic`` timestamped from ``since_ms`` on (in partition order), and per
    partition the last record before ``since_ms`` (the window's anchor)."""
    codec = default_codec()
    consumer = reader(config)
    try:
        parts = partitions(consumer, topic)
        if since_ms <= 0:
            starts = {p: OFFSET_BEGINNING for p in parts}
        else:
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in parts], timeout=TIMEOUT
            )
            starts = {}
            for tp in found:
                high = consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=TIMEOUT
                )[1]
                at = tp.offset if tp.offset >= 0 else high
                # back far enough to pass the transaction markers before the anchor
                starts[tp.partition] = max(0, at - 32)
        window: list[dict[str, Any]] = []
        anchors: dict[int, dict[str, Any]] = {}
        for p, _o, _k, value in read_range(consumer, topic, starts):
            if value is None:
                continue
            record = codec.decode(value, name)
            if int(record.get("written_at", record.get("at", 0))) < since_ms:
                anchors[p] = record
            else:
                window.append(record)
        return window, anchors
    finally:
        consumer.close()


def last_records(config: Config, topic: str, name: str) -> dict[int, dict[str, Any]]:
    """The newest record of every partition of ``topic`` that has one."""
    codec = default_codec()
    consumer = reader(config)
    try:
        out: dict[int, dict[str, Any]] = {}
        for p in partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)
            back = 16
            while high > low:
                start = max(low, high - back)
                last = None
                for _p, _o, _k, value in read_range(consumer, topic, {p: start}):
                    if value is not None:
                        last = value
                if last is not None:
                    out[p] = codec.decode(last, name)
                    break
                if start == low:
                    break
                back *= 4
        return out
    finally:
        consumer.close()
