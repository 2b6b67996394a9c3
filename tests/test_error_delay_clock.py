"""The error delay is a floor: on the loop production runs (uvloop), whose timers count whole
milliseconds and fire up to one early, no delayed reply may leave sooner than configured."""

from __future__ import annotations

import time

from ingest.server import new_event_loop, sleep_at_least


def test_sleep_at_least_never_wakes_early_on_the_production_loop() -> None:
    delay = 0.0103  # not a whole number of milliseconds: where truncation shows
    took: list[float] = []

    async def run() -> None:
        for _ in range(100):
            started = time.monotonic()
            await sleep_at_least(delay)
            took.append(time.monotonic() - started)

    loop = new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    assert len(took) == 100
    assert min(took) >= delay, sorted(took)[:5]
