"""The bench's pure helpers: Kafka requests per message, target order."""

from __future__ import annotations

from bench.kafka_requests import per_message, summary
from bench.run_all import target_order


def test_requests_per_message_by_api() -> None:
    before = {"Produce": 100, "Fetch": 50, "FetchConsumer": 50, "BrokerHeartbeat": 9}
    after = {
        "Produce": 300,
        "Fetch": 450,
        "FetchConsumer": 450,
        "BrokerHeartbeat": 19,
        "EndTxn": 10,
        "Metadata": 5,
    }
    got = per_message(before, after, 100)
    # the controller's heartbeats and Fetch's sub-count are not per-message requests
    assert got == {"Fetch": 4.0, "Produce": 2.0, "EndTxn": 0.1, "Metadata": 0.05}
    assert list(got) == ["Fetch", "Produce", "EndTxn", "Metadata"]  # most frequent first
    assert summary(got, top=2) == "6.15 (Fetch 4.00, Produce 2.00)"
    assert per_message(before, after, 0) == {} and summary({}) == "-"


def test_target_order() -> None:
    names = ["a", "b", "c", "d", "e"]
    assert target_order(names, "given", 1) == [0, 1, 2, 3, 4]
    shuffled = target_order(names, "random", 7)
    assert sorted(shuffled) == [0, 1, 2, 3, 4]
    assert target_order(names, "random", 7) == shuffled  # the printed seed repeats a run
    assert any(target_order(names, "random", s) != [0, 1, 2, 3, 4] for s in range(5))
