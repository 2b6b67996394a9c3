"""The journal worker against the real broker (in-process worker thread): a stream of messages
yields exactly the expected journal copies; poison records are dead-lettered; a slapd outage
stalls the worker without losing or under-journaling anything."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from journal_worker.decide import decide, journal_copy_record, needed_lookups
from journal_worker.lookups import make_directory, resolve
from mailjournal.config import Config
from mailjournal.directory import Directory
from mailjournal.policy import policy_digest
from schemas import DEAD_LETTER, MAGIC, encode
from tests.fixtures.journal import (
    INSIDE_IP,
    decided_count,
    journal_copies,
    make_event,
    produce_events,
    produce_raw,
    running_worker,
    values,
    wait_decided,
    wait_until,
    with_overrides,
)
from tests.fixtures.kafka import consume_all
from tests.fixtures.ldap import ATTRIBUTE, Slapd

pytestmark = pytest.mark.kafka

DIRECTORY_TOML = """
["alice@corp.example"]
extensionAttribute10 = "sup-alice@corp.example"
aliases = ["a.smith@corp.example"]

["carol@corp.example"]
extensionAttribute10 = ["journal-in@corp.example", "legal@corp.example"]

["dave@corp.example"]
extensionAttribute10 = "sup-dave@corp.example"
"""


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lag() -> float:
    """Total consumer lag the worker reports over its partitions."""
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "mailjournal_journal_consumer_lag"
        for s in m.samples
    )


def expected_records(
    config: Config, directory: Directory | None, events: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """copy_id -> the JournalCopy record the worker must emit, computed with the same pure
    functions from the same directory answers."""
    key = config.journal.stamp_key()
    out: dict[str, dict[str, Any]] = {}
    for ev in events:
        lookups = needed_lookups(ev, config, key)
        answers = resolve(directory, lookups) if lookups and directory else {}
        for c in decide(ev, config, answers, key).copies:
            assert c.copy_id not in out
            # every copy records the policy in force (docs/evidence.md)
            out[c.copy_id] = journal_copy_record(ev, c, policy_digest=policy_digest(config))
    return out


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    rec = dict(record)
    rec["received_at"] = int(rec["received_at"].timestamp() * 1000)
    rec.pop("not_before", None)
    return rec


def mixed_events(n: int) -> list[dict[str, Any]]:
    rng = random.Random(4)
    templates = [
        lambda: make_event("bob@example.net", ["alice@corp.example"]),
        lambda: make_event("bob@example.net", ["a.smith@corp.example", "carol@corp.example"]),
        lambda: make_event("bob@example.net", ["dave@corp.example", "zed@example.org"], to=""),
        lambda: make_event("dave@corp.example", ["bob@example.net"], client_ip=INSIDE_IP),
        lambda: make_event("alice@corp.example", ["carol@corp.example"], auth_user="alice"),
        lambda: make_event("bob@example.net", ["journal-in@corp.example"]),  # loop guard
        lambda: make_event("", ["erin@corp.example"]),  # a bounce from outside
    ]
    return [rng.choice(templates)() for _ in range(n)]


def test_stream_yields_exactly_the_expected_copies(kafka_config: Config, tmp_path: Path) -> None:
    (tmp_path / "dir.toml").write_text(DIRECTORY_TOML)
    config = with_overrides(
        kafka_config,
        {
            "journal": {
                "inbound": {"recipient_attribute": ATTRIBUTE},
                "outbound": {"recipient_attribute": ATTRIBUTE},
                "internal": {
                    "address": "journal-int@corp.example",
                    "ndr_address": "journal-ndr-int@corp.example",
                },
                "batch_max_messages": 25,
                "batch_max_ms": 50,
            },
            "directory": {"backend": "file", "file": {"path": str(tmp_path / "dir.toml")}},
        },
    )
    events = mixed_events(300)
    directory = make_directory(config.directory)
    expected = expected_records(config, directory, events)
    assert len(expected) > len(events)  # per-recipient copies on top of the global ones
    decided_before = sum(
        metric("mailjournal_journal_messages_decided_total", outcome=o)
        for o in ("journaled", "skipped", "dead_lettered")
    )
    loop_skips_before = metric("mailjournal_journal_skips_total", reason="journal_recipients_only")

    produce_events(config, events)
    with running_worker(config):
        wait_decided(config, len(events), 60)
    got = journal_copies(consume_all(config, config.kafka.topics.journal.name))
    ids = Counter(r["copy_id"] for r in got)
    assert [i for i, n in ids.items() if n > 1] == []  # exactly once
    assert set(ids) == set(expected)
    for rec in got:
        assert comparable(rec) == comparable(expected[rec["copy_id"]])
    # per-recipient copies really arrived, e.g. alice's supervisor for her alias address
    assert any(r["journal_address"] == "sup-alice@corp.example" for r in got)

    decided_after = sum(
        metric("mailjournal_journal_messages_decided_total", outcome=o)
        for o in ("journaled", "skipped", "dead_lettered")
    )
    assert decided_after - decided_before == len(events)
    loop_events = sum(1 for e in events if e["recipients"][0]["address"].startswith("journal-in"))
    assert loop_events > 0
    assert (
        metric("mailjournal_journal_skips_total", reason="journal_recipients_only")
        - loop_skips_before
        == loop_events
    )
    assert consume_all(config, config.kafka.topics.dead_letters.name) == []


def test_poison_records_go_to_the_dead_letter_topic(kafka_config: Config) -> None:
    config = kafka_config
    good_before = make_event("bob@example.net", ["alice@corp.example"])
    good_after = make_event("bob@example.net", ["carol@corp.example"])
    produce_events(config, [good_before])
    produce_raw(config, b"this is not avro", key=b"k-garbage")
    unknown_schema = MAGIC + bytes(8) + b"\x00\x01"
    produce_raw(config, unknown_schema, key=b"k-unknown")
    wrong_schema = encode(
        "DeadLetter",
        {
            "id": "x",
            "at": 0,
            "reason": "r",
            "source_topic": "t",
            "partition": 0,
            "offset": 0,
            "value": b"",
        },
    )
    produce_raw(config, wrong_schema, key=b"k-wrong")
    produce_events(config, [good_after])
    dead_before = metric("mailjournal_journal_messages_decided_total", outcome="dead_lettered")

    with running_worker(config):
        wait_decided(config, 5, 60)

    dead = values(consume_all(config, config.kafka.topics.dead_letters.name), DEAD_LETTER)
    by_key = {d["key"]: d for d in dead}
    assert set(by_key) == {b"k-garbage", b"k-unknown", b"k-wrong"}
    assert by_key[b"k-garbage"]["value"] == b"this is not avro"
    assert by_key[b"k-unknown"]["value"] == unknown_schema
    assert "MessageReceived" in by_key[b"k-wrong"]["reason"]
    for d in dead:
        assert d["source_topic"] == config.kafka.topics.messages.name
        assert d["offset"] >= 0 and d["reason"]
    # the messages around the poison were still journaled
    copies = journal_copies(consume_all(config, config.kafka.topics.journal.name))
    assert {c["event_id"] for c in copies} == {good_before["event_id"], good_after["event_id"]}
    assert (
        metric("mailjournal_journal_messages_decided_total", outcome="dead_lettered") - dead_before
        == 3
    )


def test_slapd_outage_stalls_without_losing_or_under_journaling(
    kafka_config: Config, slapd: Slapd
) -> None:
    users = [f"user{i}" for i in range(8)]
    for u in users:
        slapd.add_user(u, f"{u}@corp.example", journal=[f"sup-{u}@corp.example"])
    config = with_overrides(
        kafka_config,
        {
            "journal": {
                "inbound": {"recipient_attribute": ATTRIBUTE},
                "batch_max_messages": 20,
                "batch_max_ms": 50,
            },
            "directory": {
                **slapd.directory_config(timeout_seconds=1.0),
                # no cache: every message must reach slapd, so the outage cannot hide
                "cache_ttl_seconds": 0,
                "negative_ttl_seconds": 0,
                "retry_initial_seconds": 0.1,
                "retry_max_seconds": 0.5,
            },
        },
    )
    rng = random.Random(7)

    def batch(n: int) -> list[dict[str, Any]]:
        return [
            make_event(
                "bob@example.net",
                [f"{u}@corp.example" for u in rng.sample(users, rng.randint(1, 3))],
            )
            for _ in range(n)
        ]

    first, second = batch(60), batch(120)
    outages_before = metric(
        "mailjournal_journal_directory_lookups_total", backend="ldap", result="error"
    )
    produce_events(config, first)
    with running_worker(config) as worker:
        wait_decided(config, len(first), 60)
        slapd.stop()
        produce_events(config, second)
        wait_until(
            lambda: REGISTRY.get_sample_value("mailjournal_journal_directory_available") == 0,
            30,
            "the worker to notice the outage",
            interval=0.05,
        )
        stalled_at = decided_count(config)
        failed = metric(
            "mailjournal_journal_directory_lookups_total", backend="ldap", result="error"
        )
        wait_until(
            lambda: (
                metric(
                    "mailjournal_journal_directory_lookups_total", backend="ldap", result="error"
                )
                >= failed + 3
            ),
            30,
            "three more failed directory lookups (retry rounds)",
        )
        assert decided_count(config) == stalled_at, "committed past an undecided message"
        assert stalled_at < len(first) + len(second)
        assert worker.ready()
        # the stalled backlog shows as consumer lag
        wait_until(lambda: lag() > 0, 10, "consumer lag during the outage")
        slapd.start()
        wait_decided(config, len(first) + len(second), 60)
        assert REGISTRY.get_sample_value("mailjournal_journal_directory_available") == 1
        wait_until(lambda: lag() == 0, 10, "consumer lag back to 0")
    assert (
        metric("mailjournal_journal_directory_lookups_total", backend="ldap", result="error")
        > outages_before
    )

    got = journal_copies(consume_all(config, config.kafka.topics.journal.name))
    ids = Counter(r["copy_id"] for r in got)
    assert [i for i, n in ids.items() if n > 1] == []
    by_event: dict[str, set[str]] = {}
    for r in got:
        by_event.setdefault(r["event_id"], set()).add(r["journal_address"])
    for ev in first + second:
        rcpts = [r["address"].split("@")[0] for r in ev["recipients"]]
        assert by_event[ev["event_id"]] == {"journal-in@corp.example"} | {
            f"sup-{u}@corp.example" for u in rcpts
        }, ev["event_id"]
