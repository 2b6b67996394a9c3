"""Taking a batch from a Kafka consumer without sitting out the timeout (both consuming loops:
the tiered consumer and the journal worker's transactions)."""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def fetch(consumer: Consumer, n: int, timeout: float) -> list[Message]:
    """Up to ``n`` records without waiting when some are buffered; otherwise wait up to
    ``timeout`` for the first and take what came with it.

    librdkafka's batch consume waits for all ``n`` or the timeout: with a backlog of fewer than
    ``n`` buffered records every call sat out the timeout (it capped delivery at about
    ``max_inflight`` per 100 ms, and held a message at light load for the journal worker's
    whole ``batch_max_ms``). A batch never waits for more input once some is there: under load
    batches still grow, as records arrive while the previous batch is handled."""
    messages = consumer.consume(num_messages=n, timeout=0)
    if messages or timeout <= 0:
        return messages
    messages = consumer.consume(num_messages=1, timeout=timeout)
    if messages and n > 1:
        messages.extend(consumer.consume(num_messages=n - 1, timeout=0))
    return messages
