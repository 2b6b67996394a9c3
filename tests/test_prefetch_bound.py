"""A budgeted consumer's prefetch stays bounded whatever the sender wrote (real broker).

librdkafka checks its prefetch bound (``queued.max.messages.kbytes``) and its fetch sizes against
the bytes the broker stores, before decompression. A sender who makes a message compressible
(1 MB of one repeated line) would otherwise turn one 4 MiB fetch into every record of the topic
in memory at once. Our topics store records uncompressed (``TopicConfig.compression``), so the
bound counts real bytes: these tests hold it for compressible and random content, both written by
a producer that compresses (an operator's override or an older release), and show the bound
failing on a topic that stores them compressed, which is why that is not the default.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import NewTopic

from mailjournal.config import Config
from mailjournal.kafka import (
    MiB,
    consumer_config,
    make_admin,
    make_producer,
    raise_on_error,
    topic_max_message_bytes,
)
from mailjournal.kafka_stats import parse_stats
from tests.fixtures.kafka import PREFETCH, PREFETCH_PEAK

pytestmark = pytest.mark.kafka

RECORDS = 40

CONTENT: dict[str, Callable[[int], bytes]] = {
    # what a sender can choose: one line over and over compresses ~1000:1
    "repeated": lambda i: (f"{i:08d} ".encode() + b"A" * 70 + b"\r\n") * (MiB // 80),
    "random": lambda i: os.urandom(MiB),
}


def _fill(config: Config, topic: str, content: Callable[[int], bytes]) -> list[int]:
    """Writes ``RECORDS`` records of ``content``; returns their sizes."""
    # a producer that compresses, so only the topic's own setting decides what is stored
    producer = make_producer(config, extra={"compression.type": "zstd", "linger.ms": 50})
    sizes = []
    for i in range(RECORDS):
        value = content(i)
        sizes.append(len(value))
        producer.produce(
            topic,
            value,
            str(i).encode(),
            on_delivery=lambda err, _m: raise_on_error(err),
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    return sizes


def _read_slowly(config: Config, topic: str) -> tuple[list[Message], int]:
    """Every record of ``topic`` at 20 a second, a slow archive, while the fetcher fills the
    queue ahead; returns the records and the largest prefetch queue that librdkafka's statistics
    (every 100 ms) reported. Sampling can miss a peak, never invent one."""
    documents: list[str] = []
    consumer = Consumer(
        consumer_config(
            config,
            f"prefetch-{uuid.uuid4().hex[:8]}",
            role="test-prefetch",
            prefetch_bytes=PREFETCH,
            extra={"statistics.interval.ms": 100, "stats_cb": documents.append},
        )
    )
    partitions = make_admin(config).list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got: list[Message] = []
    deadline = time.monotonic() + 120
    try:
        while len(got) < RECORDS and time.monotonic() < deadline:
            got += [m for m in consumer.consume(1, timeout=1.0) if m.error() is None]
            time.sleep(0.05)  # the pace of the slow reader, not a wait for anything
    finally:
        consumer.close()
    assert len(got) == RECORDS, f"read {len(got)} of {RECORDS} records in 120 s"
    peak = max((parse_stats(d).prefetch_bytes for d in documents), default=0)
    print(
        f"{topic}: prefetch queue peaked at {peak / MiB:.1f} MiB (bound {PREFETCH_PEAK / MiB:.0f} MiB)"
    )
    return got, peak


@pytest.mark.parametrize("content", sorted(CONTENT))
def test_prefetch_holds_its_bound_whatever_the_content(kafka_config: Config, content: str) -> None:
    topic = kafka_config.kafka.topics.journal.name  # created by ensure_topics: our defaults
    sizes = _fill(kafka_config, topic, CONTENT[content])
    got, peak = _read_slowly(kafka_config, topic)
    assert sorted(len(m.value() or b"") for m in got) == sorted(sizes)
    assert peak <= PREFETCH_PEAK, (
        f"prefetch queue reached {peak / MiB:.1f} MiB, bound {PREFETCH_PEAK / MiB} MiB"
    )
    assert peak >= MiB, "the statistics never saw a prefetched record: the check saw nothing"


def test_a_topic_stored_compressed_defeats_the_bound(kafka_config: Config) -> None:
    """Why the topics are uncompressed: the same fetch sizes on a topic that keeps zstd batches
    bring compressible records in far past the bound (if librdkafka ever counts decompressed
    bytes, this fails and the default can be revisited)."""
    topic = f"{kafka_config.kafka.topics.journal.name}.zstd"
    configs = {
        "compression.type": "zstd",
        "max.message.bytes": str(topic_max_message_bytes(kafka_config)),
    }
    admin = make_admin(kafka_config)
    admin.create_topics([NewTopic(topic, 3, 1, config=configs)])[topic].result(timeout=30)
    try:
        _fill(kafka_config, topic, CONTENT["repeated"])
        _, peak = _read_slowly(kafka_config, topic)
        assert peak > 2 * PREFETCH_PEAK, f"peak {peak / MiB:.1f} MiB"
    finally:
        admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=15)


def test_a_record_larger_than_a_bounded_fetch_still_comes(kafka_config: Config) -> None:
    """fetch.max.bytes follows the bound (1 MiB here), yet a 3 MiB copy is fetched whole
    (KIP-74: the first batch of a fetch is returned even when it is larger)."""
    topic = kafka_config.kafka.topics.journal.name
    producer = make_producer(kafka_config)
    value = os.urandom(3 * MiB)
    producer.produce(topic, value, b"big", on_delivery=lambda err, _m: raise_on_error(err))
    assert producer.flush(30) == 0
    conf = consumer_config(kafka_config, f"big-{uuid.uuid4().hex[:8]}", prefetch_bytes=MiB)
    assert conf["fetch.max.bytes"] == MiB
    consumer = Consumer(conf)
    partitions = make_admin(kafka_config).list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    try:
        got: list[Message] = []
        for _ in range(30):
            got += [m for m in consumer.consume(1, timeout=1.0) if m.error() is None]
            if got:
                break
    finally:
        consumer.close()
    assert [m.value() for m in got] == [value]
