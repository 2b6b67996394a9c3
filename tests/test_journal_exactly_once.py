"""Exactly-once across crashes and rebalances, with the worker as a real subprocess
(``python -m mailjournal journal --config FILE``) on the real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from journal_worker.decide import decide
from mailjournal.config import Config
from tests.fixtures.journal import (
    INSIDE_IP,
    ROOT,
    WorkerProcess,
    decided_count,
    journal_copies,
    make_event,
    open_transaction,
    produce_events,
    wait_decided,
    wait_until,
    with_overrides,
    write_config_file,
)
from tests.fixtures.kafka import consume_all

pytestmark = pytest.mark.kafka

StartWorker = Callable[[Path, str], WorkerProcess]


def eo_config(kafka_config: Config) -> Config:
    return with_overrides(
        kafka_config,
        {
            "journal": {"batch_max_messages": 100, "batch_max_ms": 50},
            "kafka": {
                # a killed member is noticed in seconds, not the production 45 s
                "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
                # bounds how long a killed worker's open transaction holds back readers
                "producer": {"transaction.timeout.ms": 10000, "delivery.timeout.ms": 9000},
            },
            "logging": {"level": "INFO"},
        },
    )


def events(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(make_event("alice@corp.example", [f"x{i}@example.net"], client_ip=INSIDE_IP))
        else:
            out.append(make_event("bob@example.net", [f"u{i % 50}@corp.example"]))
    return out


def expected_ids(config: Config, evs: list[dict[str, Any]]) -> set[str]:
    ids = {c.copy_id for ev in evs for c in decide(ev, config, {}, None).copies}
    assert len(ids) == len(evs)  # one global copy each here
    return ids


def check_exactly_once(config: Config, expected: set[str]) -> int:
    """Every expected copy exactly once in a read_committed read; returns the number of
    records a read_uncommitted reader sees (aborted transactions included)."""
    topic = config.kafka.topics.journal.name
    # a killed worker's open transaction holds read_committed readers at its first record
    # until it is aborted: by its restarted instance (same transactional.id) at once, else by
    # the broker after transaction.timeout.ms
    wait_until(lambda: not open_transaction(config, topic), 30, "no open transaction")
    committed = journal_copies(consume_all(config, topic, timeout=30))
    counts = Counter(c["copy_id"] for c in committed)
    dupes = {i: n for i, n in counts.items() if n > 1}
    assert not dupes, f"{len(dupes)} copies more than once"
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} copies missing"
    assert set(counts) == expected
    return len(consume_all(config, topic, read_committed=False, timeout=30))


def test_kill_9_mid_batch_then_restart_is_exactly_once(
    kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    config = eo_config(kafka_config)
    path = write_config_file(config, tmp_path / "journal.toml")
    evs = events(8000)
    produce_events(config, evs)
    expected = expected_ids(config, evs)

    journal_topic = config.kafka.topics.journal.name
    kills = interrupted = 0
    for threshold in (1500, 3000, 4500, 6000):
        if interrupted >= 2:
            break
        worker = worker_processes(path, "kill-test")  # same id: the restart fences the zombie

        def progressed(threshold: int = threshold) -> bool:
            return decided_count(config) >= threshold

        wait_until(progressed, 60, f"progress past {threshold}", interval=0.02)
        # kill in the middle of a batch: its transaction has copies in the journal topic
        wait_until(
            lambda: open_transaction(config, journal_topic), 30, "an open transaction", 0.005
        )
        worker.kill9()
        kills += 1
        assert decided_count(config) < len(evs), "too late: the worker had already finished"
        # a kill that landed while the batch was already committing leaves nothing open; one
        # that interrupted the transaction leaves it open until the restart fences it
        time.sleep(0.5)
        interrupted += open_transaction(config, journal_topic)
    assert interrupted >= 1, f"none of {kills} kills interrupted an open transaction"
    worker = worker_processes(path, "kill-test")
    wait_decided(config, len(evs), 120)
    assert worker.stop() == 0, worker.log_text()[-3000:]

    uncommitted = check_exactly_once(config, expected)
    # the raw log holds the copies of the transactions the kills interrupted, aborted since
    print(
        f"{kills} kills, {interrupted} mid-transaction; "
        f"{uncommitted - len(expected)} records of aborted transactions"
    )
    assert uncommitted > len(expected)


def test_two_workers_with_rebalances_is_exactly_once(
    kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    config = eo_config(kafka_config)
    path = write_config_file(config, tmp_path / "journal.toml")
    first, second, third = events(3000), events(3000), events(2000)
    expected = expected_ids(config, first + second + third)

    a = worker_processes(path, "a")
    produce_events(config, first)
    wait_until(lambda: decided_count(config) >= 500, 60, "worker a to make progress")
    b = worker_processes(path, "b")  # joins: rebalance in the middle of the stream
    produce_events(config, second)
    wait_until(
        lambda: "assigned" in b.log_text() and decided_count(config) >= len(first) + 500,
        60,
        "worker b to take part",
    )
    produce_events(config, third)
    # a dies hard with a transaction open: b takes its partitions over after the session
    # timeout and must wait for a's transaction to be aborted before reading their offsets
    time.sleep(0.2)
    a.kill9()
    wait_decided(config, len(first) + len(second) + len(third), 120)
    assert b.stop() == 0, b.log_text()[-3000:]
    check_exactly_once(config, expected)
    assert "revoked" in b.log_text() or "assigned" in b.log_text()


def test_a_second_instance_with_the_same_id_fences_the_first(
    kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    """Zombie fencing: a replacement with the same instance id takes over the transactional id;
    the old process gets a fatal error on its next transaction and exits non-zero."""
    config = eo_config(kafka_config)
    path = write_config_file(config, tmp_path / "journal.toml")
    evs = events(8000)
    produce_events(config, evs)
    old = worker_processes(path, "same")
    wait_until(lambda: decided_count(config) >= 1000, 60, "the first instance to make progress")
    new = worker_processes(path, "same")
    wait_until(lambda: old.proc.poll() is not None, 60, "the fenced instance to exit")
    assert old.proc.returncode == 1, old.log_text()[-3000:]
    assert "fatal" in old.log_text()
    wait_decided(config, len(evs), 120)
    assert new.stop() == 0, new.log_text()[-3000:]
    check_exactly_once(config, expected_ids(config, evs))


def test_invalid_configuration_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[organization]\naccepted_domains = ["corp.example"]\n[journal]\nbatch = 1\n')
    result = subprocess.run(
        [sys.executable, "-m", "mailjournal", "journal", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "journal.batch" in result.stderr
