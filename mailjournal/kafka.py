"""Kafka client plumbing: librdkafka configuration built from ``Config``, and client factories.

Precedence, lowest first: this product's defaults, ``[kafka].properties`` (all roles), the role's
table (``[kafka.producer]``, ``[kafka.consumer]``, ``[kafka.admin]``), then what the calling stage
states explicitly (``group_id``, ``transactional_id``, ``read_committed``, ``extra``): those are
part of a stage's correctness, not tunables.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from mailjournal.config import Config
from mailjournal.kafka_stats import stats_config
from mailjournal.logs import librdkafka_logger

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# room for a record's key, headers and framing on top of its value
RECORD_OVERHEAD = 32 * 1024
# and for the record batch around it: the topic limit is checked per (compressed) batch
BATCH_OVERHEAD = 32 * 1024
# what librdkafka and the broker send per fetch by default (50 MiB)
DEFAULT_FETCH_MAX_BYTES = 50 * MiB

ClientConfig = dict[str, Any]

__all__ = [
    "ClientConfig",
    "KafkaException",
    "admin_config",
    "client_id",
    "close_clients",
    "close_consumer",
    "consumer_config",
    "flush_producer",
    "make_admin",
    "make_consumer",
    "make_producer",
    "max_record_bytes",
    "producer_config",
    "producer_max_message_bytes",
    "raise_on_error",
    "topic_max_message_bytes",
]


def client_id(role: str, prefix: str = "mailjournal") -> str:
    """``<prefix>-<role>-<host>-<pid>``: tells brokers' logs and quotas which process is which."""
    return f"{prefix}-{role}-{socket.gethostname()}-{os.getpid()}"


def max_record_bytes(config: Config) -> int:
    """Largest record value we produce: a journal copy carries the original message and an NDR
    carries the journal copy, so allow twice the accepted message size plus 1 MiB of reports."""
    return 2 * config.ingest.max_message_size + MiB


def topic_max_message_bytes(config: Config) -> int:
    """Topic ``max.message.bytes``: anything the producer lets through, the broker accepts."""
    return producer_max_message_bytes(config) + BATCH_OVERHEAD


def producer_max_message_bytes(config: Config) -> int:
    """Producer ``message.max.bytes``: one record with the largest value, key and headers."""
    return max_record_bytes(config) + RECORD_OVERHEAD


def _merge(
    defaults: Mapping[str, Any], config: Config, role: Mapping[str, Any], fixed: Mapping[str, Any]
) -> ClientConfig:
    return {**defaults, **config.kafka.properties, **role, **fixed}


def _base(config: Config, role: str) -> ClientConfig:
    return {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "client.id": client_id(role, config.kafka.client_id_prefix),
        # librdkafka's log through Python logging, its routine start-up warnings as INFO
        "logger": librdkafka_logger(),
    }


def producer_config(
    config: Config,
    *,
    transactional_id: str | None = None,
    role: str = "producer",
    extra: Mapping[str, Any] | None = None,
) -> ClientConfig:
    """Durable producer: ``acks=all`` + idempotence (no loss, no duplicates from retries)."""
    transactional = transactional_id is not None
    defaults: ClientConfig = {
        **_base(config, role),
        **stats_config(role),
        "acks": "all",
        "enable.idempotence": True,
        # topics store records uncompressed (``TopicConfig.compression``, for the consumers'
        # memory bounds), so a compressed batch would only cost a compression here and a
        # decompression in the broker; an operator's setting still wins (a WAN to the brokers)
        "compression.type": "none",
        "linger.ms": 10,  # ingest sets its own (its 250 waits for the ack)
        "message.max.bytes": producer_max_message_bytes(config),
        # librdkafka refuses a transactional producer whose delivery timeout exceeds the
        # transaction timeout; a short transaction timeout also bounds how long a crashed
        # worker's open transaction holds back read_committed consumers
        "delivery.timeout.ms": 60_000 if transactional else 120_000,
    }
    if transactional:
        defaults["transaction.timeout.ms"] = 60_000
    fixed: ClientConfig = dict(extra or {})
    if transactional:
        fixed["transactional.id"] = transactional_id
    return _merge(defaults, config, config.kafka.producer, fixed)


def consumer_config(
    config: Config,
    group_id: str,
    *,
    read_committed: bool = True,
    role: str = "consumer",
    extra: Mapping[str, Any] | None = None,
    prefetch_bytes: int | None = None,
) -> ClientConfig:
    """Consumer that commits explicitly and, by default, sees only committed transactions.

    ``prefetch_bytes`` bounds librdkafka's prefetch queue (``queued.max.messages.kbytes``, 64 MiB
    by default) for a stage whose own byte budget already holds what it works on; the operator's
    ``[kafka.consumer]`` settings still win."""
    # a fetch must be able to carry the largest record batch a topic accepts
    fetch_max = max(DEFAULT_FETCH_MAX_BYTES, topic_max_message_bytes(config))
    defaults: ClientConfig = {
        **_base(config, role),
        **stats_config(role),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": fetch_max,
        # let the broker gather a batch instead of answering every fetch with a record or two:
        # measured 3.4x less broker CPU per message (docs/performance.md), for <= 25 ms per hop
        "fetch.min.bytes": 65536,
        "fetch.wait.max.ms": 25,
        # librdkafka requires receive.message.max.bytes >= fetch.max.bytes + 512
        "receive.message.max.bytes": fetch_max + MiB,
        "session.timeout.ms": 45_000,
        "heartbeat.interval.ms": 3_000,
        # delivering a batch of large journal copies by SMTP may take minutes
        "max.poll.interval.ms": 600_000,
    }
    if prefetch_bytes is not None:
        defaults["queued.max.messages.kbytes"] = max(1024, prefetch_bytes // 1024)
        # librdkafka waits this long to fetch again once the queue is at its bound (1 s by
        # default): with a small queue that wait, not the archive, set the rate (1 MB copies:
        # 51 vs 100/s with 16 MiB, docs/performance.md)
        defaults["fetch.queue.backoff.ms"] = 10
        # one fetch lands in the queue whole, however full it is: bound the overshoot by the
        # same figure (a larger first batch still comes, KIP-74, so no record is unfetchable)
        defaults["fetch.max.bytes"] = max(MiB, prefetch_bytes)
    fixed: ClientConfig = {
        **(extra or {}),
        "group.id": group_id,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
    }
    return _merge(defaults, config, config.kafka.consumer, fixed)


def admin_config(
    config: Config, *, role: str = "admin", extra: Mapping[str, Any] | None = None
) -> ClientConfig:
    return _merge(_base(config, role), config, config.kafka.admin, dict(extra or {}))


def make_producer(
    config: Config,
    *,
    transactional_id: str | None = None,
    role: str = "producer",
    extra: Mapping[str, Any] | None = None,
) -> Producer:
    return Producer(
        producer_config(config, transactional_id=transactional_id, role=role, extra=extra)
    )


def make_consumer(
    config: Config,
    group_id: str,
    *,
    read_committed: bool = True,
    role: str = "consumer",
    extra: Mapping[str, Any] | None = None,
    prefetch_bytes: int | None = None,
) -> Consumer:
    return Consumer(
        consumer_config(
            config,
            group_id,
            read_committed=read_committed,
            role=role,
            extra=extra,
            prefetch_bytes=prefetch_bytes,
        )
    )


def make_admin(
    config: Config, *, role: str = "admin", extra: Mapping[str, Any] | None = None
) -> AdminClient:
    return AdminClient(admin_config(config, role=role, extra=extra))


def raise_on_error(err: KafkaError | None) -> None:
    """For delivery reports and message errors: turn a ``KafkaError`` into ``KafkaException``
    (whose ``args[0]`` keeps the error, with ``retriable()`` / ``fatal()``)."""
    if err is not None:
        raise KafkaException(err)


def close_consumer(name: str, consumer: Consumer) -> None:
    """Leave the group now (partitions move without a session timeout). Never raises: a stage
    on its way out must exit with the error that stopped it, not one from closing."""
    try:
        consumer.close()
    except Exception as exc:  # any type: see the docstring; offsets not committed are redone
        log.warning("%s: closing the consumer: %s: %s", name, type(exc).__name__, exc)


def flush_producer(name: str, producer: Producer, timeout: float) -> None:
    """Hand what the producer holds to Kafka, up to ``timeout``. Never raises (after a fence,
    librdkafka's flush was seen to raise a SystemError); records left unacknowledged are
    logged -- the offsets of their inputs are not committed, so whoever takes over redoes them."""
    try:
        left = producer.flush(timeout)
    except Exception as exc:  # any type: see the docstring
        log.warning("%s: flushing the producer: %s: %s", name, type(exc).__name__, exc)
    else:
        if left:
            log.warning("%s: %d records not acknowledged by Kafka at exit", name, left)


def close_clients(
    name: str, consumer: Consumer | None, producer: Producer | None, *, failed: bool
) -> None:
    """A transactional stage's way out: the consumer closed, the producer flushed unless the
    stage failed -- then what it holds belongs to a fenced or aborted transaction."""
    if consumer is not None:
        close_consumer(name, consumer)
    if producer is not None and not failed:
        flush_producer(name, producer, 5.0)
