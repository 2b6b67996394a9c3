"""Reading a topic back up to a snapshot of its end offsets, for the commands that check what
the pipeline wrote (the audit, ``mailjournal evidence``, the receipt writer's start-up).

Ending at the end offsets as they were when the read began makes every read terminate while
the pipeline keeps writing; the consumer is created with ``enable.partition.eof`` so that an
empty tail (aborted transactions, control records) ends a partition too."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition


def read_to_ends(
    consumer: Consumer,
    topic: str,
    starts: Iterable[TopicPartition],
    ends: Mapping[int, int],
    timeout: float,
) -> Iterator[Message]:
    """Every record of ``topic`` from ``starts`` (an offset or ``OFFSET_BEGINNING`` per
    partition) below ``ends`` (partition -> end offset). ``TimeoutError`` when nothing arrives
    for ``timeout`` seconds, ``RuntimeError`` on a consumer error; unassigns when done."""
    todo = [tp for tp in starts if ends[tp.partition] > max(tp.offset, 0)]
    if not todo:
        return
    consumer.assign(todo)
    remaining = {tp.partition for tp in todo}
    idle_deadline = time.monotonic() + timeout
    try:
        while remaining:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > idle_deadline:
                    raise TimeoutError(f"no progress reading {topic} for {timeout:.0f} s")
                continue
            idle_deadline = time.monotonic() + timeout
            err = msg.error()
            partition, offset = msg.partition(), msg.offset()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF and partition is not None:
                    remaining.discard(partition)
                    continue
                raise RuntimeError(f"reading {topic}: {err}")
            if partition is None or offset is None:
                continue
            if offset >= ends[partition] - 1:
                remaining.discard(partition)
            if offset < ends[partition]:
                yield msg
    finally:
        consumer.unassign()
