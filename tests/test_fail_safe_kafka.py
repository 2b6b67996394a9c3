"""Fail safe through the real broker (issue 13): a journal worker whose decision raises still
journals the message (the envelope-only fallback), a To: that makes the address parser recurse is
journaled with its recipients typed Recipient:, and a dead-lettered MessageReceived replays onto
the messages topic with ``mailjournal dlq replay`` and is decided again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from delivery import dlq
from journal_worker.decide import copy_id_for
from mailjournal import cli
from mailjournal.config import Config
from schemas import DEAD_LETTER, encode, new_event_id, now_millis
from tests.fixtures.delivery import write_toml
from tests.fixtures.journal import (
    journal_copies,
    make_event,
    produce_events,
    running_worker,
    wait_decided,
    wait_until,
)
from tests.fixtures.kafka import consume_all

pytestmark = pytest.mark.kafka

JOURNAL_IN = "journal-in@corp.example"
NDR_IN = "journal-ndr-in@corp.example"
RECURSIVE_TO = "(" * 5000 + "alice@corp.example"


def copies_of(config: Config, event_id: str) -> list[dict[str, Any]]:
    msgs = consume_all(config, config.kafka.topics.journal.name)
    return [c for c in journal_copies(msgs) if c["event_id"] == event_id]


def test_a_decision_that_raises_is_journaled_by_the_fallback(kafka_config: Config) -> None:
    config = kafka_config
    recursive = make_event("eve@ext.example", ["alice@corp.example"], to=RECURSIVE_TO)
    doomed = make_event("eve@ext.example", ["bob@corp.example", "carol@corp.example"])
    with running_worker(config) as worker:
        real = worker.decider.decide

        def decide(plan: Any, answers: Any) -> Any:  # a library bug, for one message
            if plan.event["event_id"] == doomed["event_id"]:
                raise MemoryError("a bug in a library")
            return real(plan, answers)

        worker.decider.decide = decide  # type: ignore[method-assign]
        produce_events(config, [recursive, doomed])
        wait_decided(config, 2, 60)
    (rec,) = copies_of(config, recursive["event_id"])
    assert rec["journal_address"] == JOURNAL_IN
    assert rec["recipients"][0]["address"] == "alice@corp.example"
    assert rec["recipients"][0]["type"] == "RECIPIENT"
    (fb,) = copies_of(config, doomed["event_id"])
    assert fb["copy_id"] == copy_id_for(doomed["event_id"], JOURNAL_IN, NDR_IN, False)
    assert [r["address"] for r in fb["recipients"]] == ["bob@corp.example", "carol@corp.example"]
    assert {r["type"] for r in fb["recipients"]} == {"RECIPIENT"}
    assert fb["original"] == doomed["raw"]
    assert consume_all(config, config.kafka.topics.dead_letters.name) == []


def test_a_dead_lettered_message_replays_onto_the_messages_topic(
    kafka_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kafka_config
    topics = config.kafka.topics
    event = make_event("eve@ext.example", ["alice@corp.example"])
    value = encode("MessageReceived", event)
    letter = {
        "id": new_event_id(),
        "at": now_millis(),
        "reason": "unjournalable MessageReceived: an earlier bug",
        "source_topic": topics.messages.name,
        "partition": 0,
        "offset": 7,
        "key": str(event["event_id"]).encode(),
        "value": value,
        "headers": {"trace": b"1"},
        "copy_id": None,
        "event_id": event["event_id"],
    }
    from mailjournal.kafka import make_producer

    producer = make_producer(config, role="test-journal")
    producer.produce(topics.dead_letters.name, encode(DEAD_LETTER, letter), letter["key"])
    assert producer.flush(30) == 0

    config_file = write_toml(config, tmp_path / "mailjournal.toml")
    assert cli.main(["dlq", "list", "--config", str(config_file), "--json"]) == 0
    listed = capsys.readouterr().out
    assert '"kind": "MESSAGE"' in listed and '"replayable": true' in listed
    assert cli.main(["dlq", "replay", "--config", str(config_file)]) == 0
    assert letter["id"] in capsys.readouterr().out

    (requeued,) = consume_all(config, topics.messages.name)
    assert requeued.value() == value and requeued.key() == letter["key"]
    headers = dict(requeued.headers() or [])
    assert headers[dlq.MARKER_HEADER] == letter["id"].encode() and headers["trace"] == b"1"
    with running_worker(config):
        wait_decided(config, 1, 60)
    wait_until(lambda: len(copies_of(config, event["event_id"])) == 1, 30, "the copy")
    (copy,) = copies_of(config, event["event_id"])
    assert copy["journal_address"] == JOURNAL_IN and copy["original"] == event["raw"]
    # at most once: a second replay finds nothing open
    done, broken = dlq.replay(config, None)
    assert (done, broken) == ([], [])
    assert len(consume_all(config, topics.messages.name)) == 1


def test_a_dead_letter_that_is_no_event_at_all_is_not_replayable(
    kafka_config: Config, tmp_path: Path
) -> None:
    config = kafka_config
    topics = config.kafka.topics
    from mailjournal.kafka import make_producer

    letter = {
        "id": new_event_id(),
        "at": now_millis(),
        "reason": "undecodable MessageReceived",
        "source_topic": topics.messages.name,
        "partition": 0,
        "offset": 3,
        "key": b"k",
        "value": b"not avro",
        "headers": {},
        "copy_id": None,
        "event_id": None,
    }
    producer = make_producer(config, role="test-journal")
    producer.produce(topics.dead_letters.name, encode(DEAD_LETTER, letter), b"k")
    assert producer.flush(30) == 0
    done, broken = dlq.replay(config, None)
    assert done == [] and [e.id for e in broken] == [letter["id"]]
    assert consume_all(config, topics.messages.name) == []
