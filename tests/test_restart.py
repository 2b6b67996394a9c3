"""The restart-with-backoff loop of ``mailjournal run`` and ``ingest --workers``, without
processes: a fake clock and children that exit when told."""

from __future__ import annotations

import logging

import pytest

from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL
from mailjournal.restart import Backoff, RestartLoop, Restarts

log = logging.getLogger("test.restart")


class FakeChild:
    def __init__(self, name: str, backoff: Backoff):
        self.name = name
        self.restarts = Restarts(backoff)
        self.starts = 0
        self.exit_with: int | None = None  # set to make it exit

    def __str__(self) -> str:
        return self.name

    def start(self) -> None:
        self.starts += 1
        self.exit_with = None

    def poll(self) -> int | None:
        return self.exit_with


def test_backoff_grows_and_the_last_delay_repeats() -> None:
    backoff = Backoff((1.0, 2.0, 5.0))
    assert [backoff.delay(n) for n in range(5)] == [1.0, 2.0, 5.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        Backoff(())


def test_a_child_is_restarted_after_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    child = FakeChild("journal", Backoff((1.0, 2.0)))
    loop = RestartLoop([child], log)
    loop.start_all()
    assert child.starts == 1
    caplog.set_level(logging.ERROR)
    child.exit_with = 1
    assert loop.step(100.0) is None
    assert "journal exited with 1; restarting in 1 s" in caplog.text
    assert loop.step(100.9) is None and child.starts == 1  # not yet due
    assert loop.step(101.0) is None and child.starts == 2
    child.exit_with = -9
    assert loop.step(102.0) is None
    assert "journal exited with -9; restarting in 2 s" in caplog.text
    assert loop.step(104.0) is None and child.starts == 3
    child.exit_with = 1
    loop.step(105.0)
    assert child.restarts.due == 107.0  # the last delay repeats
    assert child.restarts.count == 3


def test_a_child_healthy_long_enough_starts_over_at_the_first_delay() -> None:
    child = FakeChild("ingest", Backoff((1.0, 30.0), healthy_after=60.0))
    loop = RestartLoop([child], log, clock=lambda: 0.0)
    loop.start_all()
    child.exit_with = 1
    loop.step(0.0)
    loop.step(1.0)  # restarted: the next delay would be 30 s
    assert child.restarts.count == 1
    loop.step(61.0)  # not yet a minute since the restart
    assert child.restarts.count == 1
    loop.step(61.5)
    assert child.restarts.count == 0
    child.exit_with = 1
    loop.step(62.0)
    assert child.restarts.due == 63.0


def test_without_healthy_after_restarts_count_for_ever() -> None:
    child = FakeChild("worker 0", Backoff((1.0, 2.0, 5.0)))
    loop = RestartLoop([child], log, clock=lambda: 0.0)
    loop.start_all()
    child.exit_with = 1
    loop.step(0.0)
    loop.step(1.0)
    loop.step(10_000.0)  # ran for hours
    child.exit_with = 1
    loop.step(10_001.0)
    assert child.restarts.due == 10_003.0


def test_a_refused_configuration_stops_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    config, other = FakeChild("journal", Backoff((1.0,))), FakeChild("deliver", Backoff((1.0,)))
    loop = RestartLoop([other, config], log, stop_on_config=True)
    loop.start_all()
    config.exit_with = EXIT_CONFIG
    assert loop.step(0.0) == EXIT_CONFIG
    assert "journal refused the configuration (exit 2); stopping" in caplog.text
    assert config.restarts.count == 0 and config.starts == 1


def test_exit_2_is_an_ordinary_crash_without_stop_on_config() -> None:
    child = FakeChild("worker 0", Backoff((1.0,)))
    loop = RestartLoop([child], log)
    loop.start_all()
    child.exit_with = EXIT_CONFIG
    assert loop.step(0.0) is None
    assert loop.step(1.0) is None and child.starts == 2


def test_no_restart_stops_at_the_first_exit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    child = FakeChild("ingest", Backoff((1.0,)))
    loop = RestartLoop([child], log, restart=False)
    loop.start_all()
    child.exit_with = 0
    assert loop.step(0.0) == EXIT_FATAL
    assert "ingest exited with 0; stopping (--no-restart)" in caplog.text
    assert child.starts == 1


def test_run_steps_until_stopping() -> None:
    now = [0.0]
    child = FakeChild("capture", Backoff((1.0,)))

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 0.5 and child.starts == 1:
            child.exit_with = 1

    loop = RestartLoop([child], log, clock=lambda: now[0], sleep=sleep)
    loop.start_all()
    assert loop.run(lambda: now[0] >= 3.0) is None
    assert child.starts == 2  # exited at 0.6, restarted once its delay had passed
