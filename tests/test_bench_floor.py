"""The Kafka floor bench (bench/bench_floor.py) on the session's real broker, and its table."""

from __future__ import annotations

import psutil
import pytest

from bench.bench_floor import floor_count, floor_point
from bench.bench_hops import HOPS, hop_point
from bench.common import SMTP_SINK, SMTP_SOURCE, missing_tools
from bench.run_all import add_ratios, floors, stage_floors


def _broker_pid(bootstrap: str) -> int:
    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise AssertionError(f"no process listens on {port}")


@pytest.mark.kafka
@pytest.mark.parametrize("mode", ["carry", "reference"])
def test_the_floor_moves_every_message_through_every_role(kafka_bootstrap: str, mode: str) -> None:
    size, count = 20_000, 300
    row = floor_point(
        kafka_bootstrap, _broker_pid(kafka_bootstrap), size, count, mode, relay=True, rate=600
    )
    # floor_point raises unless every role handled exactly `count`; each role's CPU is its own
    assert set(row["cpu_ms_per_msg"]) == {"ingest", "journal", "delivery", "relay", "kafka"}
    # the broker's and the producers' work is far above a clock tick (delivery's and the relay's
    # can round to one: 300 small outcomes)
    cpu = row["cpu_ms_per_msg"]
    assert cpu["kafka"] > 0 and cpu["ingest"] > 0 and cpu["journal"] > 0, cpu
    assert row["sent"] == count and row["mode"] == mode and row["paced"] == 600
    assert row["accepted_rate"] <= 600 * 1.1  # the pace held


def test_the_floor_refuses_an_unknown_form() -> None:
    # refused before any client or process is made: no broker needed
    with pytest.raises(ValueError, match="mode must be one of"):
        floor_point("127.0.0.1:1", 1, 1024, 10, "inline")


def test_floor_table_against_postfix() -> None:
    def row(target: str, family: str, cpu: dict[str, float], **extra: object) -> dict[str, object]:
        return {
            "target": target,
            "family": family,
            "size": 1024,
            "accepted_rate": 600.0,
            "e2e_rate": 600.0,
            "cpu_ms_per_msg": cpu,
            "cpu_ms_per_msg_total": sum(cpu.values()),
            **extra,
        }

    rows = [
        row("postfix", "postfix", {"postfix": 2.0, "load": 0.2}),
        row("kafka-floor-carry", "floor", {"ingest": 0.1, "kafka": 0.9}, mode="carry", paced=1200),
        row("kafka-floor-reference", "floor", {"kafka": 0.5}, mode="reference", paced=1200),
    ]
    add_ratios(rows)
    assert "e2e_vs_postfix" not in rows[1]  # a floor has no SMTP: its rate is its pace
    lines = floors(rows).splitlines()
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == [
        "1 KB",
        "2.00",
        "1.00",
        "1.00 (0.50x), kafka 0.90",
        "0.50 (0.25x), kafka 0.50",
        "1200",
    ]
    assert floors([rows[0]]) == ""  # no floor rows, no table


def test_floor_table_with_the_smtp_hops_and_per_stage() -> None:
    hops = {"receive": 0.08, "send": 0.06}
    floor_cpu = {"ingest": 0.1, "journal": 0.05, "delivery": 0.02, "relay": 0.02, "kafka": 0.4}
    ours = {"delivery": 0.4, "relay": 0.25, "journal": 0.15, "ingest": 0.5, "kafka": 0.45}
    rows: list[dict[str, object]] = [
        {"target": "postfix", "family": "postfix", "size": 1024, "cpu_ms_per_msg": {"postfix": 2.0}},
        {"target": "mailjournal+relay", "family": "mailjournal", "size": 1024,
         "cpu_ms_per_msg": {**ours, "load": 0.1, "smtp-sink": 0.05}},
        {"target": "kafka-floor-carry+relay", "family": "floor", "mode": "carry", "size": 1024,
         "paced": 1000, "cpu_ms_per_msg": floor_cpu,
         "cpu_ms_per_msg_total": sum(floor_cpu.values()), "hops": hops},
    ]  # fmt: skip
    cell = [c.strip() for c in floors(rows).splitlines()[2].strip("|").split("|")][3]
    # 0.59 of Kafka work, plus one receive and two sends (0.08 + 2 x 0.06)
    assert cell == "0.59 (0.30x), kafka 0.40; with the SMTP hops 0.79 (0.40x)"
    table = {
        cells[2]: cells[3:]
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in stage_floors(rows).splitlines()[2:]
        )
    }
    # every stage of the measured target that has a Kafka role; the load and the sink are not
    assert table == {
        "delivery": ["0.400", "0.080", "0.320"],
        "relay": ["0.250", "0.080", "0.170"],
        "journal": ["0.150", "0.050", "0.100"],
        "ingest": ["0.500", "0.180", "0.320"],
        "kafka": ["0.450", "0.400", "0.050"],
    }
    assert stage_floors(rows[:2]) == ""  # no floor, no table


@pytest.mark.parametrize("hop", HOPS)
def test_each_smtp_hop_floor_measures_its_own_process(hop: str) -> None:
    if missing := missing_tools((SMTP_SOURCE, SMTP_SINK)):
        pytest.fail(f"{missing} not installed: `make test` installs Postfix (sysdeps)")
    row = hop_point(hop, 1024, 300)
    # a run that moved no mail would cost nothing; one that counted another process (the load
    # generator, smtp-sink) would cost far more than a millisecond per 1 KB message
    assert row["count"] == 300 and 0 < row["cpu_ms_per_msg"] < 5, row


def test_floor_count() -> None:
    assert floor_count(1024, 1000) == 20_000  # capped
    assert floor_count(1024 * 1024, 1000) == 2000  # at least
    assert floor_count(100 * 1024, 1000) == 10_240
