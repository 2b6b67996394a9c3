"""Kafka publishing for asyncio: a plain ``confluent_kafka.Producer`` whose delivery reports
resolve asyncio futures.

The event loop itself serves the producer's callbacks: ``poll(0)`` every millisecond while records
await their reports, every 50 ms otherwise (error callbacks, librdkafka's log), so a report
resolves its future on the loop's own thread. A poll thread handing each report over with
``call_soon_threadsafe`` cost about five context switches and an eventfd write and read per
message (issue 17). A report served elsewhere (``flush`` at shutdown runs off the loop) is still
handed over that way. (``confluent_kafka.aio.AIOProducer`` runs every librdkafka call on a
thread pool and measured about ten times slower.) The producer is idempotent with ``acks=all``
(see :mod:`mailjournal.kafka`).

``message.timeout.ms`` is set to the ingest's ack timeout, so when the timeout passes librdkafka
itself gives up on the record and reports the error; ingest then answers ``4xx``. A record that
timed out while already sent to a broker may still have been written ("possibly persisted"): the
client's retry then makes a second event with another id (at-least-once, never a loss).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from mailjournal.config import Config
from mailjournal.kafka import producer_config

log = logging.getLogger(__name__)

# ingest's defaults under the operator's [kafka] settings (which win): a short linger keeps
# latency low while batching the many concurrent sessions. No codec of its own: topics store
# records uncompressed (TopicConfig.compression), so an lz4 batch from here was compressed for
# nothing and then decompressed and rewritten by the broker
INGEST_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 1,
}


class PublishError(Exception):
    """The event was not stored. ``timeout`` tells a timeout from a broker/client error."""

    def __init__(self, message: str, *, timeout: bool = False, queue_full: bool = False):
        super().__init__(message)
        self.timeout = timeout
        self.queue_full = queue_full


def ingest_producer_config(
    config: Config, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    user_keys = set(config.kafka.properties) | set(config.kafka.producer)
    fixed: dict[str, Any] = {
        k: v for k, v in INGEST_PRODUCER_DEFAULTS.items() if k not in user_keys
    }
    # durability and the ack timeout are ingest's contract (250 only once stored, 4xx after the
    # timeout), not tunables
    fixed["acks"] = "all"
    fixed["enable.idempotence"] = True
    timeout_ms = max(1, int(config.ingest.kafka_ack_timeout_seconds * 1000))
    fixed["message.timeout.ms"] = timeout_ms
    fixed["delivery.timeout.ms"] = timeout_ms
    fixed.update(extra or {})
    conf = producer_config(config, role="ingest", extra=fixed)
    conf.pop("delivery.timeout.ms", None)  # alias of message.timeout.ms: keep one
    conf["message.timeout.ms"] = timeout_ms
    return conf


# how often the loop polls the producer while records await their reports, and otherwise
_POLL_BUSY_S = 0.001
_POLL_IDLE_S = 0.05


class Publisher:
    """Publish records and await their delivery reports from asyncio. Made on the loop's
    thread."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.loop = loop
        self.ack_timeout = config.ingest.kafka_ack_timeout_seconds
        conf = ingest_producer_config(config, extra)
        conf["error_cb"] = self._on_error
        conf["logger"] = logging.getLogger("ingest.kafka")  # librdkafka's log, via poll()
        self._producer = Producer(conf)
        self._running = True
        self._fatal: KafkaError | None = None
        # made on the loop (IngestServer.start): the thread whose reports need no hand-over
        self._loop_thread = threading.get_ident()
        self._busy = False  # polling at _POLL_BUSY_S
        self._tick: asyncio.Handle = loop.call_soon(self._poll)

    @property
    def fatal(self) -> KafkaError | None:
        """A fatal producer error (e.g. idempotence broken): this producer can publish no more."""
        return self._fatal

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.critical("fatal Kafka producer error: %s", err)
            self._fatal = err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("Kafka: all brokers down: %s", err)
        else:
            log.info("Kafka: %s", err)

    def _poll(self) -> None:
        """Serve the producer's callbacks (on the loop), then again soon: in a millisecond while
        records await their reports."""
        if not self._running:
            return
        producer = self._producer
        producer.poll(0)
        self._busy = len(producer) > 0
        self._tick = self.loop.call_later(_POLL_BUSY_S if self._busy else _POLL_IDLE_S, self._poll)

    def _poll_soon(self) -> None:
        """A record was just produced: its report is polled for within a millisecond."""
        if not self._busy and self._running:
            self._busy = True
            self._tick.cancel()
            self._tick = self.loop.call_later(_POLL_BUSY_S, self._poll)

    @staticmethod
    def _resolve(fut: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
        if fut.done():
            return
        if err is None:
            fut.set_result(msg)
        else:
            fut.set_exception(
                PublishError(str(err), timeout=err.code() == KafkaError._MSG_TIMED_OUT)
            )

    def submit(self, topic: str, key: bytes, value: bytes) -> Coroutine[Any, Any, Message]:
        """Produce now and return the wait for the delivery report (to be awaited; once it
        returns the record is stored with acks=all, else it raises :class:`PublishError`).
        librdkafka has copied ``value`` when this returns, so a caller that drops its references
        before the wait holds one copy of a message, not three.

        Raises :class:`PublishError` when the record cannot even be queued."""
        if self._fatal is not None:
            raise PublishError(f"producer failed: {self._fatal}")
        loop = self.loop
        fut: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if threading.get_ident() == self._loop_thread:
                self._resolve(fut, err, msg)
            else:  # flush() at shutdown, off the loop
                loop.call_soon_threadsafe(self._resolve, fut, err, msg)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        except BufferError as exc:
            raise PublishError(f"producer queue full: {exc}", queue_full=True) from None
        except Exception as exc:  # KafkaException: message too large, unknown topic, ...
            raise PublishError(f"produce failed: {exc}") from None
        self._poll_soon()
        # librdkafka reports by message.timeout.ms; the margin only guards a lost report
        guard = loop.call_later(self.ack_timeout + 5.0, self._no_report, fut)
        return self._report(fut, guard)

    @staticmethod
    async def _report(fut: asyncio.Future[Message], guard: asyncio.TimerHandle) -> Message:
        try:
            return await fut
        finally:
            guard.cancel()

    @staticmethod
    def _no_report(fut: asyncio.Future[Message]) -> None:
        if not fut.done():
            fut.set_exception(PublishError("no delivery report", timeout=True))

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still outstanding."""
        deadline = time.monotonic() + timeout
        left = len(self._producer)
        while left and time.monotonic() < deadline:
            left = self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
        return left

    def close(self, timeout: float = 30.0) -> int:
        """Flush (blocking: run it off the loop, as :meth:`IngestServer.shutdown` does), then
        stop polling."""
        left = self.flush(timeout)
        self._running = False
        return left

    def outstanding(self) -> int:
        return len(self._producer)

    def check_topic(self, topic: str, timeout: float = 5.0) -> None:
        """Log whether ``topic`` exists (blocking; run it off the event loop)."""
        try:
            md = self._producer.list_topics(topic, timeout=timeout)
        except Exception as exc:
            log.warning("Kafka not reachable at start (%s): messages get 4xx until it is", exc)
            return
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            log.error(
                "topic %s is missing (%s): create it with `mailjournal topics ensure`",
                topic,
                meta.error if meta is not None else "no metadata",
            )
