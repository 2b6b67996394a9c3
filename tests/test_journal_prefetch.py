"""The journal worker's batches are bounded in bytes, not only in messages (real broker).

A batch is what librdkafka's prefetch queue holds when the worker asks; with 1 MB messages and
the queue's default of 64 MiB, ``batch_max_messages`` (500) bounded nothing and the worker's RSS
followed the backlog. ``journal.prefetch_max_bytes`` bounds the queue, so a batch holds at most
the bound plus the one fetch that may land on a full queue.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Message

from journal_worker.worker import JournalWorker
from mailjournal.config import Config
from mailjournal.kafka import MiB
from tests.fixtures.journal import (
    journal_copies,
    make_event,
    produce_events,
    running_worker,
    wait_decided,
    with_overrides,
)
from tests.fixtures.kafka import PREFETCH, PREFETCH_PEAK, consume_all

pytestmark = pytest.mark.kafka

MESSAGES = 40


def _bounded(kafka_config: Config) -> Config:
    return with_overrides(
        kafka_config,
        {
            "journal": {
                "inbound": {
                    "address": "journal-in@corp.example",
                    "ndr_address": "journal-ndr@corp.example",
                },
                "prefetch_max_bytes": PREFETCH,
            }
        },
    )


def test_journal_batches_hold_the_byte_bound(kafka_config: Config) -> None:
    config = _bounded(kafka_config)
    assert JournalWorker(config)._consumer_settings["queued.max.messages.kbytes"] == 4096
    body = (b"x" * 998 + b"\r\n") * (MiB // 1000)
    events = [
        make_event("bob@example.net", ["alice@corp.example"], body=body) for _ in range(MESSAGES)
    ]
    batches: list[int] = []

    class Watched(JournalWorker):
        def _process(self, batch: list[Message]) -> None:
            batches.append(sum(len(m.value() or b"") for m in batch))
            super()._process(batch)
            # a slow archive's pace, not a wait for anything: the bound must hold at any pace
            # (no timing can fail this test); the pace lets the fetcher run ahead, so that a
            # bound that does not hold shows (39 MiB in one batch without it)
            time.sleep(0.2)

    produce_events(config, events)  # a backlog of 40 MiB before the worker starts
    with running_worker(config, cls=Watched):
        wait_decided(config, MESSAGES, 120)
    print(f"batch bytes (MiB): {[round(b / MiB, 1) for b in batches]}")
    assert sum(batches) >= MESSAGES * len(body)  # every message, in batches we saw
    assert max(batches) <= PREFETCH_PEAK, f"a batch held {max(batches) / MiB:.1f} MiB"


def test_a_message_larger_than_the_bound_is_journaled(kafka_config: Config) -> None:
    """The bound limits what is fetched ahead, never what can be fetched: a message of 2.5
    times the bound, between two small ones, is decided and copied like them (KIP-74: a fetch
    returns its first record whatever its size)."""
    config = _bounded(kafka_config)
    big = (b"y" * 998 + b"\r\n") * (PREFETCH * 5 // 2 // 1000)
    events = [
        make_event("bob@example.net", ["alice@corp.example"], body=body)
        for body in (b"small\r\n", big, b"small\r\n")
    ]
    produce_events(config, events)
    with running_worker(config):
        wait_decided(config, len(events), 120)
    copies = journal_copies(consume_all(config, config.kafka.topics.journal.name, min_count=3))
    assert sorted(c["event_id"] for c in copies) == sorted(e["event_id"] for e in events)
    assert max(len(c["original"]) for c in copies) > len(big)
