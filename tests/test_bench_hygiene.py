"""The bench's helpers: Kafka requests per message, target order, the goals table, the CPU
sampler."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.common import ProcSampler, box_busy_seconds, over_box, proc_cpu, window_cpu
from bench.kafka_requests import per_message, summary
from bench.run_all import add_ratios, goals, jit_cpu_seconds, settled, target_order


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


def test_window_cpu_counts_a_reaped_child_once() -> None:
    # parent 1 (alive), child 2 seen at 0.5 s with 0.2 s before the window, then reaped: the
    # parent's figure holds the child's whole 0.9 s; child 3 was never reaped in the tree
    base = {1: 1.0, 2: 0.2, 3: 0.0}
    last = {1: 1.0 + 0.3 + 0.9, 2: 0.5, 3: 0.4}
    parent = {1: 99, 2: 1, 3: 42}
    assert window_cpu(base, last, parent, alive={1}) == pytest.approx(0.3 + 0.7 + 0.4)
    # nobody gone: each process's own growth
    assert window_cpu(base, last, parent, alive={1, 2, 3}) == pytest.approx(1.2 + 0.3 + 0.4)


_BURNER = """
import os, sys, time
def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
before = os.times()
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        burn(0.3)
        os._exit(0)
    os.waitpid(pid, 0)
after = os.times()
used = sum(after[:4]) - sum(before[:4])  # own user+system and the reaped children's
sys.stdout.write(f"{used}\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_proc_sampler_counts_reaped_daemons_once() -> None:
    """A parent that forks and reaps CPU-bound children, as Postfix's master does its daemons:
    the sampler's figure is what the tree used, not the children twice (it was 2x before)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        sampler = ProcSampler(interval=0.02)
        sampler.add("tree", proc.pid)
        with sampler:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            truth = float(proc.stdout.readline())
        got = sampler.cpu("tree")
        proc.stdin.write("end\n")
        proc.stdin.flush()
    finally:
        proc.wait(10)
    assert truth >= 1.1  # 4 x 0.3 s, in clock ticks
    # the parent's own reading happens inside the window: the sampler may see a little more
    assert truth - 0.05 <= got <= truth * 1.1 + 0.05, (got, truth)


def test_the_machine_bounds_the_groups() -> None:
    assert not over_box(10.0, 10.0) and not over_box(10.4, 10.0)  # sampling noise
    assert over_box(12.0, 10.0)  # a group counted twice shows
    before = box_busy_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    # this process's own 0.2 s are inside what the machine did (in clock ticks)
    assert box_busy_seconds() - before >= 0.18


def test_the_broker_warm_up_ends_when_its_cost_settles() -> None:
    assert not settled([]) and not settled([0.5])
    assert not settled([0.6, 0.45])  # still falling by a quarter
    assert settled([0.6, 0.45, 0.42])  # the last two within 10 %
    assert settled([0.30, 0.32]) and not settled([0.30, 0.34])


def test_the_run_in_reads_the_broker_jvms_compiler_threads(kafka_broker_pid: int) -> None:
    """The run-in ends on the broker's JIT share: the compiler threads of the real broker are
    found (starting a broker compiles thousands of methods), and what they used is part of what
    the whole process used, so it is not some other field of their stat lines."""
    jit = jit_cpu_seconds(kafka_broker_pid)
    # the whole process's, read another way (psutil)
    assert 0 < jit <= proc_cpu(kafka_broker_pid)
    assert jit_cpu_seconds(kafka_broker_pid) >= jit
