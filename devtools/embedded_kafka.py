"""Zero-install demo mode: librdkafka's in-process mock cluster (``test.mock.num.brokers``).

Only for a first look on a machine without Java. Nothing is durable, the mock does not store
transactional offsets (so exactly-once does not hold), and it is slow to consume: no correctness
or speed claim may rest on it. Tests and benchmarks use the real broker (``kafka_local``).
"""

from __future__ import annotations

from confluent_kafka import Producer

from mailjournal.config import Config
from mailjournal.topics import topic_specs


def start_mock_cluster(cfg: Config) -> tuple[Producer, str]:
    """Start the mock cluster inside this process; returns the handle that keeps it alive and the
    bootstrap address other processes reach it by."""
    holder = Producer({"test.mock.num.brokers": 1, "log_level": 3})
    brokers = holder.list_topics(timeout=10).brokers.values()
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
    # the mock serves no CreateTopics; a metadata request for a topic auto-creates it
    client = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    for spec in topic_specs(cfg):
        client.list_topics(topic=spec.name, timeout=10)
    client.flush(1)
    return holder, bootstrap
