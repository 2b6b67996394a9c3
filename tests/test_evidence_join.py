"""The receipt writer's join (evidence/state.py), pure: when a message's receipt is due."""

from __future__ import annotations

from typing import Any

from evidence.state import DONE_HORIZON_MS, Entry, Join
from tests.test_schemas import delivery_outcome, journal_copy, message_received


def records() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    msg = message_received()
    copy = journal_copy(event_id=msg["event_id"], copy_id=msg["event_id"] + ".c1")
    outcome = delivery_outcome(
        event_id=msg["event_id"], copy_id=copy["copy_id"], status="DELIVERED"
    )
    return msg, copy, outcome


def test_ready_only_when_decided_and_every_copy_final() -> None:
    msg, copy, outcome = records()
    join = Join(["10.0.0.0/8"])
    join.add_message(msg, 0, 7, now=1)
    assert join.ready() == []
    join.decided({0: 7})  # the journal worker has not committed past offset 7 yet
    assert join.ready() == []
    join.decided({0: 8})  # decided, no copy read: the message owed none
    assert join.ready() == [msg["event_id"]]
    join.add_copy(copy, now=2)  # ... but it did owe one, not yet final
    assert join.ready() == []
    join.add_outcome({**outcome, "status": "RETRYING"}, now=3)
    assert join.ready() == []
    join.add_outcome(outcome, now=4)
    assert join.ready() == [msg["event_id"]]
    body = join.body(msg["event_id"], "sha256:writer")
    assert [c["status"] for c in body["copies"]] == ["DELIVERED"]
    assert body["policy_digest"] == copy["policy_digest"]
    assert body["message_sha256"] == msg["sha256"] and body["client"]["tls"] is True


def test_done_messages_ignore_late_records_and_expire() -> None:
    msg, copy, outcome = records()
    join = Join([])
    join.decided({0: 100})
    join.add_message(msg, 0, 1, now=0)
    join.add_copy(copy, now=0)
    join.add_outcome(outcome, now=0)
    (event_id,) = join.ready()
    join.mark_done(event_id, at=10)
    join.add_outcome(outcome, now=20)  # a duplicate delivery's outcome, after the receipt
    assert join.ready() == [] and join.pending() == 0
    assert join.expired(10 + DONE_HORIZON_MS) == []
    assert join.expired(11 + DONE_HORIZON_MS) == [event_id] and event_id not in join.entries


def test_changelog_round_trip_restores_readiness() -> None:
    msg, copy, outcome = records()
    join = Join([])
    join.add_message(msg, 2, 5, now=0)
    join.add_copy(copy, now=0)
    join.add_outcome(outcome, now=0)
    saved = {e: entry.to_json() for e, entry in join.entries.items()}
    again = Join([])
    for event_id, data in saved.items():
        again.restored(event_id, Entry.from_json(data))
    again.decided({2: 6})
    assert again.ready() == [msg["event_id"]]
    assert again.body(msg["event_id"], "x") == join.body(msg["event_id"], "x")


def test_a_replays_copy_is_not_an_owed_copy() -> None:
    """``mailjournal replay`` writes extra copies (``replay_run`` set) for messages that may
    still be open here: the receipt lists the live copies only and does not wait for a replay."""
    msg, copy, outcome = records()
    join = Join(["10.0.0.0/8"])
    join.add_message(msg, 0, 7, now=1)
    join.decided({0: 8})
    join.add_copy(copy, now=2)
    replayed = {**copy, "copy_id": copy["copy_id"] + ".replay-r1", "replay_run": "r1"}
    join.add_copy(replayed, now=3)
    join.add_outcome(outcome, now=4)
    assert join.ready() == [msg["event_id"]]
    listed = [c["copy_id"] for c in join.body(msg["event_id"], "sha256:writer")["copies"]]
    assert listed == [copy["copy_id"]]
