"""Exactly-once across crashes and rebalances, with the worker as a real subprocess
(``python -m mailjournal journal --config FILE``) on the real broker. Every crash lands where a
fault point (``mailjournal/faults.py``) stops the worker, and the test checks the transaction is
open there before it kills: the crash is a fact, not a hope about timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from journal_worker.decide import decide
from mailjournal.config import Config
from mailjournal.kafka import make_consumer
from tests.fixtures.faults import fault_env, kill_paused, wait_fault
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

StartWorker = Callable[..., WorkerProcess]


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


def offsets_pending(config: Config) -> bool:
    """Whether the journal group has offsets pending in an open transaction: a ``read_committed``
    offset fetch (``require_stable``) is then refused until the transaction ends, while a plain
    one answers at once (:func:`decided_count`)."""
    topic = config.kafka.topics.messages.name
    reader = make_consumer(
        config, config.kafka.journal_group, read_committed=True, role="test-stable-offsets"
    )
    try:
        tps = [
            TopicPartition(topic, p) for p in reader.list_topics(topic, 10).topics[topic].partitions
        ]
        try:
            reader.committed(tps, timeout=5)
        except KafkaException as exc:
            code = exc.args[0].code()
            assert code in (KafkaError.UNSTABLE_OFFSET_COMMIT, KafkaError._TIMED_OUT), exc
            return True
        return False
    finally:
        reader.close()


def frozen_mid_transaction(
    config: Config, worker: WorkerProcess, log: Path, point: str
) -> tuple[int, int]:
    """Wait until ``worker`` is frozen at the ``pause`` fault ``point`` and assert, from the
    broker, that its batch is inside an open transaction: no copy of it is visible to a
    ``read_committed`` reader and its offsets are not committed; at ``before_commit`` they are
    pending in the transaction. Returns (messages decided, records in the journal topic)."""
    topic = config.kafka.topics.journal.name
    pid = wait_fault(log, point, 120, diagnose=lambda: worker.log_text()[-3000:])
    assert pid == worker.pid
    assert offsets_pending(config) == (point == "journal.txn.before_commit")
    decided = decided_count(config)
    assert decided < N_EVENTS, "the worker had finished before the point"
    # one copy per message here: the committed copies are exactly those of committed offsets
    visible = journal_copies(consume_all(config, topic, timeout=30))
    assert len(visible) == decided, (len(visible), decided)
    # how many of the open batch's copies librdkafka had sent before the pause is timing
    # (its background thread sends after linger.ms): printed, not asserted
    raw = len(consume_all(config, topic, read_committed=False, timeout=30))
    return decided, raw


N_EVENTS = 3000


@pytest.mark.parametrize("point", ["journal.txn.after_produce", "journal.txn.before_commit"])
def test_kill_9_mid_batch_then_restart_is_exactly_once(
    point: str, kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    """Fault points ``journal.txn.after_produce`` (copies produced, offsets not yet sent) and
    ``journal.txn.before_commit`` (offsets sent, commit not called): the worker pauses there in
    its third batch, the test checks from the broker that the batch is in an open transaction
    (:func:`frozen_mid_transaction`), SIGKILLs it and restarts it with the same instance id.
    Every copy ends exactly once in a ``read_committed`` read."""
    # the frozen transaction must outlive the inspection: the restart aborts it, not the broker
    producer = {"transaction.timeout.ms": 120000}
    config = with_overrides(eo_config(kafka_config), {"kafka": {"producer": producer}})
    path = write_config_file(config, tmp_path / "journal.toml")
    evs = events(N_EVENTS)
    produce_events(config, evs)
    expected = expected_ids(config, evs)
    log = tmp_path / "faults.log"

    worker = worker_processes(path, "kill-test", fault_env(f"{point}:pause@3", log))
    decided, raw_at_kill = frozen_mid_transaction(config, worker, log, point)
    kill_paused(worker.pid)
    worker.proc.wait(30)
    # the restart (same instance id: same transactional id) fences the dead one's producer,
    # aborts its open transaction and redoes the batch from the committed offsets
    worker = worker_processes(path, "kill-test")
    wait_decided(config, len(evs), 120)
    assert worker.stop() == 0, worker.log_text()[-3000:]

    uncommitted = check_exactly_once(config, expected)
    print(
        f"{point}: killed with {decided} decided, {raw_at_kill - decided} open copies sent; "
        f"{uncommitted - len(expected)} records of aborted transactions in the raw log"
    )
    assert uncommitted >= raw_at_kill  # the aborted batch's copies stay in the log, unread


def test_frozen_past_the_transaction_timeout_then_resumed_is_exactly_once(
    kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    """Fault point ``journal.txn.before_commit`` (pause, then SIGCONT -- no kill): the worker is
    frozen with its offsets in an open transaction until the coordinator aborts that transaction
    for its age (``transaction.timeout.ms``, 10 s here) and bumps the epoch. Resumed, the same
    process must see its commit refused, replace its producer (same transactional id), redo the
    batch and go on: no exit, no copy lost, none twice."""
    config = eo_config(kafka_config)
    path = write_config_file(config, tmp_path / "journal.toml")
    evs = events(N_EVENTS)
    produce_events(config, evs)
    expected = expected_ids(config, evs)
    log = tmp_path / "faults.log"

    worker = worker_processes(path, "frozen", fault_env("journal.txn.before_commit:pause@3", log))
    frozen_mid_transaction(config, worker, log, "journal.txn.before_commit")
    # the coordinator's abort is what the test waits for, read from the broker: the group's
    # offsets are no longer pending in a transaction
    wait_until(lambda: not offsets_pending(config), 120, "the coordinator to abort the frozen txn")
    os.kill(worker.pid, signal.SIGCONT)
    wait_decided(config, len(evs), 180)
    assert worker.proc.poll() is None, worker.log_text()[-3000:]  # the same process went on
    text = worker.log_text()
    # the coordinator's abort bumped the epoch, which librdkafka reports as a fatal fence: told
    # apart from a real zombie fence by the transaction's age, it costs a producer, not the process
    assert "rewinding" in text and "replacing the transactional producer" in text, text[-3000:]
    assert worker.stop() == 0, worker.log_text()[-3000:]
    check_exactly_once(config, expected)


def test_two_workers_with_rebalances_is_exactly_once(
    kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    """Fault point ``journal.txn.before_commit`` (pause in the joining worker's first
    transaction, then SIGKILL): a second worker joins mid-stream (a rebalance with both alive),
    then dies hard with its transaction open; the first takes its partitions back after the
    session timeout, and must wait for that transaction's abort before reading their offsets."""
    config = eo_config(kafka_config)
    path = write_config_file(config, tmp_path / "journal.toml")
    first, second, third, fourth = events(3000), events(3000), events(2000), events(1000)
    expected = expected_ids(config, first + second + third + fourth)
    log = tmp_path / "faults.log"

    a = worker_processes(path, "a")
    produce_events(config, first)
    wait_until(lambda: decided_count(config) >= 500, 60, "worker a to make progress")
    produce_events(config, second)
    # joins: rebalance in the middle of the stream; its first transaction stops at the point
    b = worker_processes(path, "b", fault_env("journal.txn.before_commit:pause", log))
    wait_until(lambda: "assigned" in b.log_text(), 120, "worker b to get partitions")
    # a may have decided all it had by now: new records on every partition give b work for sure
    produce_events(config, third)
    wait_fault(log, "journal.txn.before_commit", 120, diagnose=lambda: b.log_text()[-3000:])
    assert offsets_pending(config), "b froze before its offsets were in the transaction"
    kill_paused(b.pid)
    produce_events(config, fourth)
    wait_decided(config, len(first) + len(second) + len(third) + len(fourth), 120)
    assert a.stop() == 0, a.log_text()[-3000:]
    check_exactly_once(config, expected)
    assert "revoked" in a.log_text() and "assigned" in a.log_text()


def test_a_second_instance_with_the_same_id_fences_the_first(
    kafka_config: Config, tmp_path: Path, worker_processes: StartWorker
) -> None:
    """Zombie fencing: a replacement with the same instance id takes over the transactional id;
    the old process gets a fatal error on its next transaction and exits non-zero. No fault
    point: nothing crashes here, the fence comes from the second instance."""
    config = eo_config(kafka_config)
    path = write_config_file(config, tmp_path / "journal.toml")
    evs = events(8000)
    later = events(600)
    produce_events(config, evs)
    old = worker_processes(path, "same")
    wait_until(lambda: decided_count(config) >= 1000, 60, "the first instance to make progress")
    new = worker_processes(path, "same")
    # its transactional producer is initialised (the old one fenced) before it subscribes
    wait_until(lambda: "assigned" in new.log_text(), 120, "the second instance to get partitions")
    # the old one may have decided all it had by now, and an idle instance does not learn of
    # the fence: new records on every partition give it a transaction to fail on, for sure
    produce_events(config, later)
    wait_until(lambda: old.proc.poll() is not None, 60, "the fenced instance to exit")
    assert old.proc.returncode == 1, old.log_text()[-3000:]
    assert "fatal" in old.log_text()
    wait_decided(config, len(evs) + len(later), 120)
    assert new.stop() == 0, new.log_text()[-3000:]
    check_exactly_once(config, expected_ids(config, evs + later))


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
