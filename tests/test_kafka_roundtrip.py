"""Client configuration (pure builders) and round trips through the real broker."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from mailjournal.config import Config
from mailjournal.kafka import (
    MiB,
    admin_config,
    client_id,
    consumer_config,
    make_consumer,
    make_producer,
    max_record_bytes,
    producer_config,
    raise_on_error,
    topic_max_message_bytes,
)
from mailjournal.topics import topic_specs
from tests.fixtures.config import make_config
from tests.fixtures.kafka import consume_all

# --------------------------------------------------------------------------- pure builders


def test_producer_defaults_are_durable() -> None:
    cfg = producer_config(make_config({"kafka": {"bootstrap_servers": "k1:9092,k2:9092"}}))
    assert cfg["bootstrap.servers"] == "k1:9092,k2:9092"
    assert cfg["acks"] == "all"
    assert cfg["enable.idempotence"] is True
    assert cfg["compression.type"] == "none"  # the topics store records uncompressed
    assert cfg["linger.ms"] == 10
    assert "transactional.id" not in cfg
    assert cfg["client.id"] == f"mailjournal-producer-{socket.gethostname()}-{os.getpid()}"


def test_sizes_follow_max_message_size() -> None:
    config = make_config({"ingest": {"max_message_size": 10 * MiB}})
    assert max_record_bytes(config) == 21 * MiB  # a copy carries the original, an NDR the copy
    producer = producer_config(config)
    assert producer["message.max.bytes"] >= max_record_bytes(config)
    # whatever the producer sends, the topics accept and the consumers can fetch
    assert topic_max_message_bytes(config) > producer["message.max.bytes"]
    consumer = consumer_config(config, "g")
    assert consumer["fetch.max.bytes"] >= topic_max_message_bytes(config)
    assert consumer["receive.message.max.bytes"] >= consumer["fetch.max.bytes"] + 512
    for spec in topic_specs(config):
        assert spec.configs["max.message.bytes"] == str(topic_max_message_bytes(config))


def test_overrides_win_in_order() -> None:
    config = make_config(
        {
            "kafka": {
                "client_id_prefix": "mj",
                "properties": {"linger.ms": 50, "compression.type": "lz4", "socket.timeout.ms": 7},
                "producer": {"linger.ms": 20},
                "consumer": {"auto.offset.reset": "latest", "group.id": "ignored"},
                "admin": {"socket.timeout.ms": 9},
            }
        }
    )
    producer = producer_config(config, extra={"batch.size": 1000})
    assert producer["compression.type"] == "lz4"  # common properties beat defaults
    assert producer["linger.ms"] == 20  # role table beats common properties
    assert producer["socket.timeout.ms"] == 7
    assert producer["batch.size"] == 1000
    assert producer["client.id"].startswith("mj-producer-")
    consumer = consumer_config(config, "mailjournal-journal", read_committed=False)
    assert consumer["auto.offset.reset"] == "latest"
    assert consumer["group.id"] == "mailjournal-journal"  # the stage's group is not a tunable
    assert consumer["isolation.level"] == "read_uncommitted"
    assert admin_config(config)["socket.timeout.ms"] == 9


def test_consumer_defaults() -> None:
    cfg = consumer_config(make_config(), "g1")
    assert cfg["group.id"] == "g1"
    assert cfg["enable.auto.commit"] is False
    assert cfg["auto.offset.reset"] == "earliest"
    assert cfg["isolation.level"] == "read_committed"


def test_prefetch_bound_of_a_budgeted_stage() -> None:
    """The tiered consumer bounds librdkafka's prefetch queue to a part of its byte budget and
    refills it without librdkafka's 1 s back-off; a stage without a budget keeps the defaults,
    and an operator's [kafka.consumer] setting wins over the bound."""
    plain = consumer_config(make_config(), "g")
    assert "queued.max.messages.kbytes" not in plain
    assert "fetch.queue.backoff.ms" not in plain
    bounded = consumer_config(make_config(), "g", prefetch_bytes=16 * MiB)
    assert bounded["queued.max.messages.kbytes"] == 16 * 1024
    assert bounded["fetch.queue.backoff.ms"] == 10
    assert (
        consumer_config(make_config(), "g", prefetch_bytes=1)["queued.max.messages.kbytes"] == 1024
    )
    chosen = make_config({"kafka": {"consumer": {"queued.max.messages.kbytes": 65536}}})
    assert (
        consumer_config(chosen, "g", prefetch_bytes=16 * MiB)["queued.max.messages.kbytes"] == 65536
    )
    quiet = {"logger": logging.getLogger("test.librdkafka.quiet")}
    config = make_config({"kafka": {"bootstrap_servers": "127.0.0.1:1"}})
    Consumer(consumer_config(config, "g", extra=quiet, prefetch_bytes=16 * MiB)).close()


def test_transactional_producer_config() -> None:
    cfg = producer_config(make_config(), transactional_id="journal-0")
    assert cfg["transactional.id"] == "journal-0"
    assert cfg["delivery.timeout.ms"] <= cfg["transaction.timeout.ms"]


def test_librdkafka_accepts_the_configs() -> None:
    """librdkafka validates names and ranges at construction; no broker needed."""
    config = make_config({"kafka": {"bootstrap_servers": "127.0.0.1:1"}})
    quiet = {"logger": logging.getLogger("test.librdkafka.quiet")}
    Producer(producer_config(config, extra=quiet)).flush(0)
    Producer(producer_config(config, transactional_id="t-1", extra=quiet)).flush(0)
    Consumer(consumer_config(config, "g", extra=quiet)).close()
    AdminClient(admin_config(config, extra=quiet))


def test_client_id_and_raise_on_error() -> None:
    assert client_id("ingest", "x") == f"x-ingest-{socket.gethostname()}-{os.getpid()}"
    raise_on_error(None)
    from confluent_kafka import KafkaError

    with pytest.raises(KafkaException) as info:
        raise_on_error(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert info.value.args[0].code() == KafkaError._MSG_TIMED_OUT


# --------------------------------------------------------------------------- real broker


@pytest.mark.kafka
def test_idempotent_producer_round_trip(kafka_config: Config) -> None:
    topic = kafka_config.kafka.topics.messages.name
    producer = make_producer(kafka_config)
    errors: list[object] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors.append(err)

    sent = {f"key-{i}".encode(): f"value-{i}".encode() * 50 for i in range(200)}
    for key, value in sent.items():
        producer.produce(topic, value, key, headers=[("h", key)], on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []

    got = consume_all(kafka_config, topic)
    assert {m.key(): m.value() for m in got} == sent
    assert all(m.headers() == [("h", m.key())] for m in got)
    assert len({m.partition() for m in got}) == 3  # keys spread over the topic's partitions
    # per partition, offsets are dense: no duplicates from the idempotent producer's retries
    for p in {m.partition() for m in got}:
        offsets = [m.offset() for m in got if m.partition() == p]
        assert offsets == list(range(len(offsets)))


@pytest.mark.kafka
def test_large_record_fits(kafka_config: Config) -> None:
    """A journal copy of a maximal message (default 25 MiB) passes producer, topic and fetch."""
    config = kafka_config
    topic = config.kafka.topics.journal.name
    producer = make_producer(config)
    value = os.urandom(config.ingest.max_message_size + 512 * 1024)  # incompressible
    producer.produce(topic, value, b"big", on_delivery=lambda err, _m: raise_on_error(err))
    assert producer.flush(60) == 0
    got = consume_all(config, topic, timeout=60)
    assert [len(m.value() or b"") for m in got] == [len(value)]


@pytest.mark.kafka
def test_aborted_transactions_are_invisible_to_read_committed(kafka_config: Config) -> None:
    topic = kafka_config.kafka.topics.journal.name
    producer = make_producer(kafka_config, transactional_id=f"test-{uuid.uuid4().hex}")
    producer.init_transactions(30)

    def batch(label: str, n: int) -> None:
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, f"{label}-{i}".encode(), f"{label}-{i}".encode())

    batch("committed-a", 5)
    producer.commit_transaction(30)
    batch("aborted", 4)
    producer.flush(30)  # the aborted records really reach the log before the abort
    producer.abort_transaction(30)
    batch("committed-b", 3)
    producer.commit_transaction(30)

    committed = consume_all(kafka_config, topic)
    values = sorted((m.value() or b"").decode() for m in committed)
    assert len(values) == 8
    assert not any(v.startswith("aborted") for v in values)
    everything = consume_all(kafka_config, topic, read_committed=False)
    assert sum((m.value() or b"").startswith(b"aborted") for m in everything) == 4


@pytest.mark.kafka
def test_consumer_group_resumes_from_committed_offsets(kafka_config: Config) -> None:
    topic = kafka_config.kafka.topics.messages.name
    group = kafka_config.kafka.journal_group
    producer = make_producer(kafka_config)
    for i in range(10):
        producer.produce(topic, b"%d" % i, b"%d" % i)
    assert producer.flush(30) == 0

    def read(n: int) -> list[bytes]:
        consumer = make_consumer(kafka_config, group)
        consumer.subscribe([topic])
        out: list[bytes] = []
        try:
            for _ in range(100):
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    out.append(msg.value() or b"")
                    consumer.commit(message=msg, asynchronous=False)
                if len(out) >= n:
                    break
        finally:
            consumer.close()
        return out

    assert sorted(read(10)) == sorted(b"%d" % i for i in range(10))
    producer.produce(topic, b"10", b"10")
    assert producer.flush(30) == 0
    assert read(1) == [b"10"]
