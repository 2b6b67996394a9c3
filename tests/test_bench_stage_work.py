"""The per-stage step benchmark runs its steps through the real functions: every stage's rows are
printed with a positive cost, and the steps' inputs are what the stages would see."""

from __future__ import annotations

import re

import pytest

from bench.bench_stage_work import ingest_steps, journal_steps, main, smtp_source_message
from schemas import JOURNAL_COPY, MESSAGE_RECEIVED, codec
from tests.fixtures.config import make_config


def test_every_stage_prints_its_steps_and_their_sum(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "1024", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    for stage in ("ingest", "journal", "delivery", "relay"):
        rows = [line for line in out.splitlines() if line.startswith(f"| {stage} |")]
        assert len(rows) >= 4, out
        for row in rows:
            cost = re.sub(r"[*|\s]", "", row.rsplit("|", 2)[-2])
            assert float(cost) > 0, row


def test_the_steps_make_the_records_the_stages_consume() -> None:
    config = make_config({})
    message = smtp_source_message(2048)
    _, value = ingest_steps(message, config)
    event = codec.decode(value, MESSAGE_RECEIVED)
    # the bytes as received, after the trace fields ingest prepends
    assert bytes(event["raw"]).endswith(message)
    assert event["received_sha256"] is not None
    _, copy = journal_steps(value, config)
    record = codec.decode(copy, JOURNAL_COPY)
    assert record["original"] == event["raw"] and record["event_id"] == event["event_id"]
