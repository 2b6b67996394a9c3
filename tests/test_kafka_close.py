"""Closing a stage's Kafka clients: a stage leaving because of an error exits with that error,
never one from closing (CI saw librdkafka's flush raise SystemError after a fence, which hid the
worker's "fatal" line). Real librdkafka clients throughout: on the session broker, or on a port
nothing listens on where a flush cannot complete."""

from __future__ import annotations

import logging
import re
import socket

import pytest
from confluent_kafka import Producer, TopicPartition

from mailjournal.config import Config
from mailjournal.kafka import (
    close_clients,
    flush_producer,
    make_consumer,
    make_producer,
)


def _dead_address() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _queued_producer(n: int) -> Producer:
    producer = Producer({"bootstrap.servers": _dead_address(), "message.timeout.ms": 60_000})
    for i in range(n):
        producer.produce("t", value=b"%d" % i)
    return producer


def test_records_left_unacknowledged_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    producer = _queued_producer(3)
    with caplog.at_level(logging.WARNING, "mailjournal.kafka"):
        flush_producer("stage", producer, 0.5)
    # librdkafka's queue length: the 3 records, plus any connection-error event not yet served
    found = re.search(r"stage: (\d+) records not acknowledged by Kafka at exit", caplog.text)
    assert found is not None and int(found[1]) >= 3, caplog.text


def test_after_a_failure_the_producer_is_not_flushed(caplog: pytest.LogCaptureFixture) -> None:
    producer = _queued_producer(2)
    with caplog.at_level(logging.WARNING, "mailjournal.kafka"):
        close_clients("stage", None, producer, failed=True)
    # a flush against a dead broker would have reported the 2 records left: it was not called
    assert "not acknowledged" not in caplog.text
    assert caplog.text == ""


def test_a_clean_exit_hands_every_record_to_kafka(
    kafka_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka_config.kafka.topics.dead_letters.name
    consumer = make_consumer(kafka_config, "close-test", role="test")
    consumer.subscribe([topic])
    producer = make_producer(kafka_config, role="test")
    for i in range(5):
        producer.produce(topic, key=b"k", value=b"%d" % i)
    with caplog.at_level(logging.WARNING, "mailjournal.kafka"):
        close_clients("stage", consumer, producer, failed=False)
    assert len(producer) == 0
    assert caplog.text == ""
    low_high = make_consumer(kafka_config, "close-test-2", role="test")
    try:
        ends = [
            low_high.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)
        ]
    finally:
        low_high.close()
    assert sum(ends) == 5
