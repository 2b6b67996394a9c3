"""close_clients: a stage leaving because of an error exits with that error, never one from
closing (CI saw librdkafka's flush raise SystemError after a fence, which hid the "fatal" line)."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Producer

from mailjournal.kafka import close_clients


class _Raising:
    def __init__(self, exc: BaseException | None = None, left: int = 0) -> None:
        self.exc = exc
        self.left = left
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")
        if self.exc is not None:
            raise self.exc

    def flush(self, timeout: float) -> int:
        self.calls.append(f"flush {timeout}")
        if self.exc is not None:
            raise self.exc
        return self.left


def _clients(c: _Raising, p: _Raising) -> tuple[Any, Any]:
    return cast(Consumer, c), cast(Producer, p)


@pytest.mark.parametrize(
    "exc",
    [
        SystemError("returned a result with an exception set"),
        RuntimeError("Consumer closed"),
        ValueError("x"),
    ],
)
def test_errors_while_closing_are_logged_not_raised(
    exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    c, p = _Raising(exc), _Raising(exc)
    with caplog.at_level(logging.WARNING, "mailjournal.kafka"):
        close_clients("stage", *_clients(c, p), failed=False)
    assert c.calls == ["close"] and p.calls == ["flush 5.0"]
    assert f"stage: closing the consumer: {type(exc).__name__}" in caplog.text
    assert f"stage: flushing the producer: {type(exc).__name__}" in caplog.text


def test_after_a_failure_the_producer_is_not_flushed() -> None:
    c, p = _Raising(), _Raising()
    close_clients("stage", *_clients(c, p), failed=True)
    assert c.calls == ["close"] and p.calls == []


def test_records_left_unacknowledged_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    c, p = _Raising(), _Raising(left=3)
    with caplog.at_level(logging.WARNING, "mailjournal.kafka"):
        close_clients("stage", *_clients(c, p), failed=False, flush_seconds=1)
    assert p.calls == ["flush 1"]
    assert "stage: 3 records not acknowledged by Kafka at exit" in caplog.text
