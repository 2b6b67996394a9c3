"""``mailjournal deliver`` as a real process: killed between attempts, stopped with SIGTERM."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition

from mailjournal.config import Config
from mailjournal.kafka import make_admin, make_consumer
from tests.fixtures.delivery import (
    delivery_config,
    make_copy,
    produce_copies,
    read_outcomes,
    wait_outcomes,
)
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = pytest.mark.kafka

JOURNAL_IN = "journal-in@corp.example"


def committed_offsets(config: Config, topic: str) -> dict[int, int]:
    """The delivery group's committed offsets of ``topic`` (partition -> offset, -1001 = none)."""
    md = make_admin(config).list_topics(topic, timeout=10)
    consumer = make_consumer(config, config.kafka.delivery_group, role="test-offsets")
    try:
        tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def end_offsets(config: Config, topic: str) -> dict[int, int]:
    md = make_admin(config).list_topics(topic, timeout=10)
    consumer = make_consumer(config, f"test-ends-{uuid.uuid4().hex[:6]}", role="test-ends")
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in md.topics[topic].partitions
        }
    finally:
        consumer.close()


def test_killed_between_attempts_then_delivered_once(
    kafka_config: Config, delivery_processes, smtp_capture: CaptureServer
):
    config = delivery_config(
        kafka_config,
        smtp_capture.port,
        {"delivery": {"retry_delays_seconds": [3.0], "retry_jitter": 0}},
    )
    smtp_capture.script(JOURNAL_IN, "451 4.3.0 try again later", "451 4.3.0 try again later")
    copy = make_copy()
    produce_copies(config, [copy])
    journal = config.kafka.topics.journal.name
    ends = {p: e for p, e in end_offsets(config, journal).items() if e > 0}

    first = delivery_processes(config)
    wait_until(lambda: smtp_capture.attempts_for(JOURNAL_IN), 60, "the first attempt")
    # the journal record's offset is committed only once its retry record is durably queued
    wait_until(
        lambda: all(committed_offsets(config, journal)[p] == e for p, e in ends.items()),
        20,
        "the commit past the journal record",
    )
    assert first.kill() != 0  # SIGKILL while the copy waits on the retry tier
    assert not smtp_capture.messages

    second = delivery_processes(config)
    latest = wait_outcomes(
        config,
        lambda o: o.get(copy["copy_id"], {}).get("status") == "DELIVERED",
        timeout=60,
        what="delivery after the restart",
    )
    assert latest[copy["copy_id"]]["attempts"] == 3
    replies = [a.reply for a in smtp_capture.attempts_for(JOURNAL_IN)]
    assert replies == ["451 4.3.0 try again later", "451 4.3.0 try again later", "250 OK"]
    assert len(smtp_capture.messages) == 1
    assert second.terminate() == 0, second.log()


def test_sigterm_finishes_in_flight_sends_and_commits(
    kafka_config: Config, delivery_processes, smtp_capture: CaptureServer
):
    config = delivery_config(
        kafka_config,
        smtp_capture.port,
        {"delivery": {"concurrency": 4, "max_inflight": 8}},
    )
    smtp_capture.data_delay = 1.0  # a slow smart host: sends are in flight when SIGTERM comes
    copies = [make_copy() for _ in range(12)]
    produce_copies(config, copies)
    journal = config.kafka.topics.journal.name

    first = delivery_processes(config)
    wait_until(
        lambda: sum(1 for _, verb in smtp_capture.commands if verb == "DATA") >= 2,
        60,
        "sends in flight",
    )
    assert first.terminate(timeout=60) == 0, first.log()
    delivered_before = {m.data for m in smtp_capture.messages}
    assert delivered_before, "in-flight sends were finished"
    # every send that got its 250 was committed: the restart sends none of them again
    committed = committed_offsets(config, journal)
    assert sum(o for o in committed.values() if o >= 0) == len(delivered_before)

    smtp_capture.data_delay = 0
    second = delivery_processes(config)
    wait_until(lambda: len(smtp_capture.messages) >= len(copies), 60, "all copies")
    assert second.terminate() == 0, second.log()
    assert len(smtp_capture.messages) == len(copies)  # none twice
    outcomes = read_outcomes(config, min_count=len(copies))
    assert sorted(o["copy_id"] for o in outcomes) == sorted(c["copy_id"] for c in copies)
    assert {o["status"] for o in outcomes} == {"DELIVERED"}
