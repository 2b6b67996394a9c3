"""The ingest event-loop lag monitor tells its own work (a blocking callback) from waiting for a
CPU: a callback that spins 300 ms shows as busy lag, one that sleeps 300 ms (the thread off the
CPU, as under starvation) as lag only."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from ingest import loopmon


def test_split_lag() -> None:
    assert loopmon.split_lag(-0.001, 0.0) == (0.0, 0.0)  # early timer: no lag
    assert loopmon.split_lag(0.3, 0.35) == (0.3, 0.3)  # busy all along
    assert loopmon.split_lag(0.3, 0.01) == (0.3, 0.0)  # off the CPU all along
    assert loopmon.split_lag(0.3, 0.15) == pytest.approx((0.3, 0.1))  # partly


def _sum(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_sum") or 0.0


def _count() -> float:
    return REGISTRY.get_sample_value("mailjournal_ingest_event_loop_lag_seconds_count") or 0.0


async def _run(block: str) -> None:
    task = asyncio.create_task(loopmon.monitor(0.05))
    await asyncio.sleep(0)  # the monitor runs up to its timer: its interval now spans the block
    seen = _count()
    if block == "spin":  # 300 ms of this thread's CPU, however long a busy machine makes it
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
    else:
        time.sleep(0.3)  # blocks the loop without using the CPU (the behaviour under test)
    deadline = time.monotonic() + 30
    while _count() == seen:  # the sample whose interval held the block
        assert time.monotonic() < deadline, "the monitor never observed the blocked interval"
        await asyncio.sleep(0.01)  # the poll interval of this deadline loop
    task.cancel()


def test_a_spinning_callback_is_busy_lag_and_a_sleeping_one_is_not() -> None:
    lag, busy = (
        "mailjournal_ingest_event_loop_lag_seconds",
        "mailjournal_ingest_event_loop_busy_lag_seconds",
    )
    before = _sum(lag), _sum(busy)
    asyncio.run(_run("spin"))
    spun = _sum(lag) - before[0], _sum(busy) - before[1]
    assert spun[0] >= 0.25 and spun[1] >= 0.24, spun
    before = _sum(lag), _sum(busy)
    asyncio.run(_run("sleep"))
    slept = _sum(lag) - before[0], _sum(busy) - before[1]
    assert slept[0] >= 0.25 and slept[1] < 0.1, slept
