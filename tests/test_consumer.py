"""The tiered consumer's pure parts and Kafka helpers, without a broker: the one fetch helper
(never sits out the timeout once records are buffered), the one lag function, retry tiers."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition

from mailjournal.consumer.fetch import fetch
from mailjournal.consumer.lag import partition_lag
from mailjournal.consumer.retry import RetryTiers


class _FakeConsumer:
    """``consume`` hands out what is buffered (a list) and, when nothing is, what ``arriving``
    delivers after the wait; it records every call."""

    def __init__(self, buffered: list[str], arriving: list[str] | None = None, high: int = 10):
        self.buffered = buffered
        self.arriving = arriving or []
        self.high = high
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((num_messages, timeout))
        if not self.buffered and timeout > 0:
            self.buffered, self.arriving = self.arriving, []
        out, self.buffered = self.buffered[:num_messages], self.buffered[num_messages:]
        return out

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        if self.high == -2:
            raise KafkaException("broker down")
        return 0, self.high


def fake_consumer(buffered: list[str], arriving: list[str] | None = None, high: int = 10) -> Any:
    """A :class:`_FakeConsumer`, typed as the ``Consumer`` the helpers take."""
    return _FakeConsumer(buffered, arriving, high)


def test_fetch_takes_what_is_buffered_without_waiting() -> None:
    consumer = fake_consumer(["a", "b", "c"])
    assert fetch(consumer, 10, 5.0) == ["a", "b", "c"]
    assert consumer.calls == [(10, 0)]


def test_fetch_waits_for_the_first_record_and_takes_what_came_with_it() -> None:
    consumer = fake_consumer([], arriving=["a", "b", "c"])
    assert fetch(consumer, 2, 5.0) == ["a", "b"]
    assert consumer.calls == [(2, 0), (1, 5.0), (1, 0)]
    assert fetch(fake_consumer([]), 10, 0.0) == []


def test_partition_lag_is_end_minus_position_or_unknown() -> None:
    consumer = fake_consumer([], high=10)
    lag = partition_lag(consumer, TopicPartition("t", 0, 4), cached=True)
    assert lag == 6
    assert partition_lag(consumer, TopicPartition("t", 0, 12), cached=True) == 0
    assert partition_lag(consumer, TopicPartition("t", 0, -1001), cached=True) is None
    assert (
        partition_lag(fake_consumer([], high=-1), TopicPartition("t", 0, 4), cached=False) is None
    )
    with pytest.raises(KafkaException):
        partition_lag(fake_consumer([], high=-2), TopicPartition("t", 0, 4), cached=False)


def test_retry_tiers_wait_at_most_their_delay_with_the_largest_jitter() -> None:
    tiers = RetryTiers(("r.0", "r.1"), (60.0, 300.0), 0.1)
    assert tiers.topic(1) == "r.1"
    assert tiers.longest_wait_ms() == {"r.0": 66_000, "r.1": 330_000}
    with pytest.raises(ValueError, match="one retry topic per delay"):
        RetryTiers(("r.0",), (60.0, 300.0), 0.1)
