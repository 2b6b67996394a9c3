"""librdkafka statistics -> Prometheus gauges (mailjournal.kafka_stats).

The samples in tests/data/librdkafka_stats/ were recorded from confluent-kafka 2.16 against the
real local broker: ``consumer.json`` is one member of a two-member group on a 3-partition topic
(partition 0 assigned, nothing read yet; partition 1 assigned, read up to offset 6 with offset 2
committed; partition 2 assigned to the other member), ``producer.json`` a producer holding 7
records of 100 bytes in its queue (linger).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mailjournal.config import Config
from mailjournal.kafka import make_consumer, make_producer
from mailjournal.kafka_stats import StatsCollector, parse_stats, stats_config

DATA = Path(__file__).parent / "data" / "librdkafka_stats"
TOPIC = "mailjournal.messages.sample"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def lag_value(stage: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "mailjournal_kafka_consumer_lag",
        {"stage": stage, "topic": topic, "partition": str(partition)},
    )


def test_consumer_lag_per_assigned_partition() -> None:
    s = parse_stats(json.dumps(sample("consumer")))
    assert s.client_type == "consumer"
    # p0: nothing read, no commit -> from the log start (0) to the end (40)
    # p1: handed out up to 6 (commit at 2 is older) -> 40 - 6
    # p2 (other member's) and -1 (librdkafka's internal queue) are not ours
    assert s.lag == {(TOPIC, 0): 40, (TOPIC, 1): 34}
    assert (s.brokers, s.brokers_up) == (1, 1)  # the GroupCoordinator entry is not a broker
    assert (s.queue_messages, s.queue_bytes) == (0, 0)
    # fetched, not yet handed out: every partition reports the one consumer queue it is
    # forwarded to (74 records, 211 bytes), so that is the total, not the sum
    assert (s.prefetch_messages, s.prefetch_bytes) == (74, 211)


def test_transactional_consumer_lag_uses_the_position() -> None:
    """The journal worker commits through its producer's transaction, so librdkafka never learns
    the committed offset (committed_offset -1001, consumer_lag -1); the position still counts."""
    doc = sample("consumer")
    part = doc["topics"][TOPIC]["partitions"]["1"]
    part.update(committed_offset=-1001, consumer_lag=-1, app_offset=25, ls_offset=30)
    assert parse_stats(doc).lag[(TOPIC, 1)] == 5


def test_read_committed_end_is_the_last_stable_offset() -> None:
    doc = sample("consumer")
    part = doc["topics"][TOPIC]["partitions"]["1"]
    part.update(hi_offset=50, ls_offset=45, app_offset=40)  # an open transaction holds 45..49
    assert parse_stats(doc).lag[(TOPIC, 1)] == 5
    part.update(ls_offset=-1001)  # read_uncommitted reports no LSO
    assert parse_stats(doc).lag[(TOPIC, 1)] == 10


def test_producer_queue() -> None:
    s = parse_stats(json.dumps(sample("producer")).encode())
    assert s.client_type == "producer"
    assert (s.queue_messages, s.queue_bytes) == (7, 700)
    assert s.lag == {}
    assert (s.brokers, s.brokers_up) == (1, 1)


def test_broker_down_counts() -> None:
    doc = sample("producer")
    broker = next(iter(doc["brokers"].values()))
    broker["state"] = "TRY_CONNECT"
    assert (parse_stats(doc).brokers, parse_stats(doc).brokers_up) == (1, 0)


def test_malformed_documents() -> None:
    with pytest.raises(ValueError):
        parse_stats("{not json")
    with pytest.raises(ValueError):
        parse_stats("[]")


def test_collector_sets_and_drops_series() -> None:
    stage = "unit-collector"
    collector = StatsCollector(stage)
    doc = sample("consumer")
    collector(json.dumps(doc))
    assert lag_value(stage, TOPIC, 0) == 40
    assert lag_value(stage, TOPIC, 1) == 34
    assert lag_value(stage, TOPIC, 2) is None
    labels = {"stage": stage}
    assert REGISTRY.get_sample_value("mailjournal_kafka_consumer_prefetch_bytes", labels) == 211
    assert (
        REGISTRY.get_sample_value(
            "mailjournal_kafka_brokers_up", {"stage": stage, "client": "consumer"}
        )
        == 1
    )
    # a rebalance takes partition 0 away: its series goes, partition 1 stays
    revoked = copy.deepcopy(doc)
    revoked["topics"][TOPIC]["partitions"]["0"]["desired"] = False
    collector(json.dumps(revoked))
    assert lag_value(stage, TOPIC, 0) is None
    assert lag_value(stage, TOPIC, 1) == 34

    producer = StatsCollector(stage)
    producer(json.dumps(sample("producer")))
    assert REGISTRY.get_sample_value("mailjournal_kafka_producer_queue_messages", labels) == 7
    assert REGISTRY.get_sample_value("mailjournal_kafka_producer_queue_bytes", labels) == 700


def test_collector_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in stats_cb would come out of the stage's poll(): it is logged instead."""
    with caplog.at_level(logging.ERROR, logger="mailjournal.kafka_stats"):
        StatsCollector("unit-broken")("{truncated")
    assert "not exported" in caplog.text


def test_stats_config_shape() -> None:
    conf = stats_config("ingest", 2500)
    assert conf["statistics.interval.ms"] == 2500
    assert isinstance(conf["stats_cb"], StatsCollector)
    assert conf["stats_cb"].stage == "ingest"


@pytest.mark.kafka
def test_real_consumer_and_producer_export(kafka_config: Config) -> None:
    """A real producer and consumer on the session broker, with statistics every 100 ms."""
    stage = "it-stats"
    topic = kafka_config.kafka.topics.messages.name
    producer = make_producer(kafka_config, role="it", extra=stats_config(stage, 100))
    for i in range(30):
        producer.produce(topic, f"v{i}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # statistics arrive through poll()
        producer.poll(0.1)
        if (
            REGISTRY.get_sample_value(
                "mailjournal_kafka_brokers_up", {"stage": stage, "client": "producer"}
            )
            == 1
        ):
            break
    assert (
        REGISTRY.get_sample_value("mailjournal_kafka_producer_queue_messages", {"stage": stage})
        == 0
    )

    consumer = make_consumer(
        kafka_config, "it-stats-group", role="it", extra=stats_config(stage, 100)
    )
    try:
        consumer.subscribe([topic])
        got = 0
        deadline = time.monotonic() + 30
        while got < 6 and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got += 1
        assert got == 6

        def total() -> float | None:
            values = [lag_value(stage, topic, p) for p in range(3)]
            return None if None in values else sum(v for v in values if v is not None)

        # 30 records, 6 handed to us (librdkafka prefetched more but did not hand them out);
        # paused, poll() serves the statistics callback without handing out records
        consumer.pause(consumer.assignment())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and total() != 24:
            assert consumer.poll(0.1) is None
        assert total() == 24
    finally:
        consumer.close()
