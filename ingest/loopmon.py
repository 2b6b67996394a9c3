"""Event-loop lag of an ingest worker, split into its two causes.

A timer due every ``INTERVAL`` seconds measures how late the loop runs it (the lag every SMTP
session on this worker sees) and how much CPU the loop's thread used meanwhile. The lag the
thread spent on CPU is the loop's own work -- a blocking callback, or more callbacks than it
keeps up with; the rest is waiting for a CPU on a saturated machine. "No stall longer than
100 ms" is a statement about the first part: that is the one code can fix.
"""

from __future__ import annotations

import asyncio
import time

from ingest import metrics as m

INTERVAL = 0.05


def split_lag(late: float, cpu: float, interval: float = INTERVAL) -> tuple[float, float]:
    """(lag, busy part of it) of a timer that fired ``late`` seconds after it was due while the
    loop's thread used ``cpu`` seconds of CPU: CPU time up to the interval is ordinary work
    done in time, beyond it the thread was busy while the timer was overdue."""
    lag = max(0.0, late)
    return lag, min(lag, max(0.0, cpu - interval))


async def monitor(interval: float = INTERVAL) -> None:
    """Run for the life of the worker (cancel it to stop)."""
    while True:
        wall, cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(interval)
        lag, busy = split_lag(
            time.perf_counter() - wall - interval, time.thread_time() - cpu, interval
        )
        m.LOOP_LAG.observe(lag)
        m.LOOP_BUSY_LAG.observe(busy)
