"""The bench's pure helpers: Kafka requests per message, target order, the goals table."""

from __future__ import annotations

from bench.kafka_requests import per_message, summary
from bench.run_all import add_ratios, goals, target_order


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


def _row(
    target: str, family: str, size: int, e2e: float, cpu: dict[str, float], rss: dict[str, float]
) -> dict[str, object]:
    return {
        "target": target,
        "family": family,
        "size": size,
        "e2e_rate": e2e,
        "accepted_rate": e2e,
        "cpu_ms_per_msg": cpu,
        "groups": {k: {"peak_rss_mb": v} for k, v in rss.items()},
    }


def test_goals_table() -> None:
    mb = 1024 * 1024
    rows = [
        _row("postfix", "postfix", 1024, 500, {"postfix": 4.0, "load": 0.2}, {"postfix": 500}),
        _row("postfix", "postfix", mb, 100, {"postfix": 16.0, "load": 0.3}, {"postfix": 500}),
        # our stages and Kafka count; the load and the sink do not; Kafka's RSS is not a stage's
        _row(
            "mailjournal+relay",
            "mailjournal",
            1024,
            1000,
            {"ingest": 0.5, "kafka": 1.5, "load": 9.0, "smtp-sink": 9.0},
            {"ingest": 120, "kafka": 900, "smtp-sink": 400},
        ),
        _row(
            "mailjournal",
            "mailjournal",
            mb,
            140,
            {"ingest": 6.0, "journal": 4.0},
            {"delivery": 310},
        ),
        _row(
            "mailjournal", "mailjournal", 2048, 900, {"ingest": 1.0}, {"ingest": 100}
        ),  # no Postfix
    ]
    add_ratios(rows)
    lines = goals(rows).splitlines()
    assert (
        lines[2]
        == "| mailjournal+relay | 1 KB | 2.00 (≥ 2) yes | 0.50 (≤ 0.5) yes | ingest 120 (≤ 300) yes |"
    )
    assert (
        lines[3]
        == "| mailjournal | 1 MB | 1.40 (≥ 1.5) no | 0.62 (≤ 0.5) no | delivery 310 (≤ 300) no |"
    )
    assert len(lines) == 4
    assert goals(rows[:2]) == ""
