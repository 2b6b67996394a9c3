"""ingest's Kafka publisher on the session's real broker: the event loop serves the delivery
reports itself (no poll thread), and a report served off the loop (``flush`` at shutdown) still
resolves its wait."""

from __future__ import annotations

import asyncio
import threading

from confluent_kafka import Message

from ingest.publisher import Publisher
from mailjournal.config import Config
from tests.fixtures.kafka import consume_all


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_reports_resolve_on_the_loop_and_the_records_are_stored(kafka_config: Config) -> None:
    topic = kafka_config.kafka.topics.messages.name
    before = _threads()

    async def publish() -> tuple[list[Message], set[str]]:
        publisher = Publisher(kafka_config, asyncio.get_running_loop())
        try:
            waits = [publisher.submit(topic, b"k%d" % i, b"v%d" % i) for i in range(20)]
            acked = await asyncio.wait_for(asyncio.gather(*waits), 30)
            return acked, _threads()
        finally:
            assert await asyncio.to_thread(publisher.close, 10) == 0

    acked, during = asyncio.run(publish())
    assert all(m.error() is None and m.offset() is not None for m in acked)
    # librdkafka's own threads are native and not listed: no Python thread polls for the loop
    assert during - before == set()
    stored = consume_all(kafka_config, topic, min_count=20, timeout=30)
    assert sorted(m.value() for m in stored) == sorted(b"v%d" % i for i in range(20))


def test_a_report_served_by_flush_off_the_loop_still_resolves(kafka_config: Config) -> None:
    topic = kafka_config.kafka.topics.messages.name

    async def publish() -> Message:
        loop = asyncio.get_running_loop()
        publisher = Publisher(kafka_config, loop)
        wait = publisher.submit(topic, b"k", b"v")
        left: list[int] = []
        flusher = threading.Thread(target=lambda: left.append(publisher.close(30)))
        # the loop is blocked until the flush is done: only the flushing thread can serve the
        # report, and the loop resolves the wait once it runs again
        flusher.start()
        flusher.join(40)
        assert left == [0]
        return await asyncio.wait_for(wait, 10)

    msg = asyncio.run(publish())
    assert msg.error() is None and msg.value() == b"v"
