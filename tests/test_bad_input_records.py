"""Poison records on every topic a consumer reads (issue #7, bad input): the retry tiers of
delivery, the relay's retry tiers, the messages topic as the relay reads it, and the topics
``mailjournal audit`` reads. A poison record goes to the dead-letter topic with a reason that
names the problem, and its source topic, partition and offset; the records behind it in the same
partition are delivered and committed; the stage keeps running, and the audit lists each poison
record without crashing. The journal worker's messages topic and delivery's
journal topic are covered in tests/test_journal_worker.py and tests/test_delivery_worker.py.

What counts as poison: anything that does not decode as a JournalCopy, and a copy that breaks an
invariant every writer keeps (a negative attempt count, a first attempt in the future -- it
would never expire --, a kind the stage does not handle). A ``not_before`` far in the future is
not poison: the copy is owed, and it waits at most its tier's longest delay, so it cannot hold
the partition behind it for ever.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition

from delivery.retry import tier_topics
from mailjournal.config import Config
from mailjournal.kafka import make_consumer, make_producer
from mailjournal.smtp.outcomes import OutcomeFields, make_outcome
from relay.handler import RelayHandler
from relay.retry import relay_tier_topics
from relay.routing import relay_copies
from schemas import (
    DELIVERY_OUTCOME,
    JOURNAL_COPY,
    MAGIC,
    MESSAGE_RECEIVED,
    encode,
    fingerprint64,
    now_millis,
)
from tests.fixtures.delivery import (
    WorkerThread,
    delivery_config,
    latest_outcomes,
    make_copy,
    read_dead_letters,
)
from tests.fixtures.journal import make_event
from tests.fixtures.kafka import delete_topics, kafka_test_config, unique_suffix
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer, wait_until
from tests.test_relay_worker import relay_config

pytestmark = pytest.mark.kafka

YEAR_MS = 365 * 24 * 3600 * 1000
# the poisons below that decode as no JournalCopy
UNREADABLE = {"garbage", "empty", "wrong schema", "foreign schema", "timestamp out of range"}
FOREIGN_SCHEMA = {"type": "record", "name": "Foreign", "fields": [{"name": "x", "type": "string"}]}


def foreign_avro() -> bytes:
    """A valid Avro single-object record of a schema mailjournal does not know."""
    out = io.BytesIO()
    out.write(MAGIC + fingerprint64(FOREIGN_SCHEMA))
    fastavro.schemaless_writer(out, fastavro.parse_schema(FOREIGN_SCHEMA), {"x": "hello"})
    return out.getvalue()


def relay_envelope(rcpt: str) -> dict[str, Any]:
    return {
        "mail_params": {
            "size": None,
            "body": None,
            "smtputf8": False,
            "ret": None,
            "envid": None,
            "other": {},
        },
        "recipients": [{"address": rcpt, "notify": None, "orcpt": None, "other": {}}],
        "next_hop": "inbound",
        "delay_notified": False,
    }


def retried(copy: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``copy`` as a retry tier holds it after one failed attempt, due now."""
    now = now_millis()
    return {
        **copy,
        "attempt": 1,
        "not_before": now,
        "first_attempt_at": now - 1000,
        "last_reply": "451 4.3.0 try later",
        **fields,
    }


def poisons(good: Callable[..., dict[str, Any]], wrong_kind: str) -> list[tuple[str, bytes, str]]:
    """(label, record value, what the dead letter's reason must say). ``good`` makes a valid
    copy for the topic; ``wrong_kind`` is a kind the stage under test does not handle."""
    outcome = make_outcome(make_copy(), OutcomeFields("DELIVERED", 1, "250 ok", now_millis()))
    wrong = good()
    wrong["kind"] = wrong_kind
    if wrong_kind == "RELAY":
        wrong["relay"] = relay_envelope("bob@corp.example")
    else:
        wrong["relay"] = None
    return [
        ("garbage", b"\x00\xffthis is not avro\r\n", "not an Avro single-object record"),
        ("empty", b"", "0 bytes"),
        (
            "wrong schema",
            encode(DELIVERY_OUTCOME, outcome),
            "expected a JournalCopy record, got DeliveryOutcome",
        ),
        ("foreign schema", foreign_avro(), "unknown writer schema fingerprint"),
        ("negative attempt", encode(JOURNAL_COPY, good(attempt=-1)), "attempt is -1"),
        (
            "first attempt in the future",
            encode(JOURNAL_COPY, good(first_attempt_at=now_millis() + 10 * YEAR_MS)),
            "first_attempt_at",
        ),
        ("wrong kind", encode(JOURNAL_COPY, wrong), f"kind {wrong_kind}"),
        (
            "timestamp out of range",
            encode(JOURNAL_COPY, good(not_before=2**62)),
            "cannot decode JournalCopy",
        ),
    ]


def produce_at(config: Config, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    """Produce (key, value) records to partition 0 of ``topic``, in order; their offsets."""
    producer = make_producer(config, role="test-producer")
    offsets: list[int] = []
    errors: list[Any] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    for key, value in records:
        producer.produce(topic, value=value, key=key, partition=0, on_delivery=on_delivery)
        producer.flush(30)  # one at a time: the order in the partition is the order here
    assert not errors and len(offsets) == len(records), errors
    return offsets


def committed(config: Config, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def interleave(
    config: Config, topic: str, good: Callable[..., dict[str, Any]], wrong_kind: str
) -> tuple[list[dict[str, Any]], dict[int, tuple[str, bytes, bytes, str]]]:
    """valid, poison, valid, poison, ..., valid, far-future valid, valid on partition 0 of
    ``topic``. Returns the copies owed a delivery and {offset: (label, key, value, reason)}."""
    owed: list[dict[str, Any]] = []
    records: list[tuple[bytes, bytes]] = []
    labels: list[tuple[str, str] | None] = []

    def add_valid(copy: dict[str, Any]) -> None:
        owed.append(copy)
        records.append((str(copy["copy_id"]).encode(), encode(JOURNAL_COPY, copy)))
        labels.append(None)

    add_valid(good())
    for n, (label, value, reason) in enumerate(poisons(good, wrong_kind)):
        records.append((f"poison-{n}".encode(), value))
        labels.append((label, reason))
        add_valid(good())
    # owed, but claims to wait ten years: it waits at most the tier's longest delay
    add_valid(good(not_before=now_millis() + 10 * YEAR_MS))
    add_valid(good())
    offsets = produce_at(config, topic, records)
    assert offsets == list(range(offsets[0], offsets[0] + len(records)))
    expected = {
        offsets[i]: (lab[0], records[i][0], records[i][1], lab[1])
        for i, lab in enumerate(labels)
        if lab is not None
    }
    return owed, expected


def dead_letters(config: Config, count: int) -> list[dict[str, Any]]:
    """The dead letters, once there are at least ``count``."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = read_dead_letters(config)
        return len(found) >= count

    wait_until(enough, 30, f"{count} dead letters")
    return found


def check_dead_letters(
    letters: list[dict[str, Any]], expected: dict[tuple[str, int], tuple[str, bytes, bytes, str]]
) -> None:
    got = {(d["source_topic"], d["offset"]): d for d in letters}
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for where, (label, key, value, reason) in expected.items():
        letter = got[where]
        assert letter["partition"] == 0, label
        assert reason in letter["reason"], (label, letter["reason"])
        assert letter["key"] == key and letter["value"] == value, label


# -- delivery: every retry tier -------------------------------------------------------------------


def test_poison_on_every_retry_tier_is_dead_lettered_and_the_tier_keeps_moving(
    kafka_config: Config, worker_threads: Callable[..., WorkerThread], smtp_capture: CaptureServer
) -> None:
    config = delivery_config(kafka_config, smtp_capture.port)
    tiers = tier_topics(config)
    assert len(tiers) == 2
    owed: list[dict[str, Any]] = []
    expected: dict[tuple[str, int], tuple[str, bytes, bytes, str]] = {}
    for topic in tiers:
        copies, bad = interleave(config, topic, lambda **f: retried(make_copy(), **f), "RELAY")
        owed += copies
        expected.update({(topic, off): v for off, v in bad.items()})

    worker = worker_threads(config)
    wait_until(lambda: len(smtp_capture.messages) >= len(owed), 60, f"{len(owed)} copies delivered")
    letters = dead_letters(config, len(expected))
    check_dead_letters(letters, expected)
    # each owed copy delivered once, nothing else sent (the wrong-kind copy was not relayed)
    outcomes = latest_outcomes(config)
    assert {c["copy_id"]: outcomes[c["copy_id"]]["status"] for c in owed} == {
        c["copy_id"]: "DELIVERED" for c in owed
    }
    assert len(smtp_capture.messages) == len(owed)
    per_tier = (len(owed) + len(expected)) // len(tiers)
    for topic in tiers:  # committed past every poison record, to the end of the partition
        wait_until(
            lambda t=topic: committed(config, config.kafka.delivery_group, t) == per_tier,
            10,
            f"{topic} committed to its end",
        )
    assert worker.rc is None and worker.worker.ready
    assert worker.worker.stats.dead_letters == len(expected)


# -- relay: its retry tiers, and the messages topic as the relay reads it -------------------------


@pytest.fixture
def relay_cleanup(kafka_config: Config) -> Iterator[list[Config]]:
    """Delete the relay tiers a test created (kafka_config deletes only its own five topics)."""
    configs: list[Config] = []
    yield configs
    for config in configs:
        delete_topics(config, relay_tier_topics(config))


def test_poison_on_every_relay_tier_and_the_messages_topic(
    kafka_config: Config,
    worker_threads: Callable[..., WorkerThread],
    smtp_capture: CaptureServer,
    relay_cleanup: list[Config],
) -> None:
    config = relay_config(
        kafka_config, smtp_capture.port, retry_delays_seconds=[0.5, 1.0], expiry_seconds=60
    )
    relay_cleanup.append(config)
    tiers = relay_tier_topics(config)
    assert len(tiers) == 2
    counter = iter(range(10_000))

    def good(**fields: Any) -> dict[str, Any]:
        rcpt = f"user{next(counter)}@corp.example"
        [copy] = relay_copies(
            make_event("alice@ext.example", [rcpt], listener_role="relay"), config
        )
        return retried(copy, **fields)

    owed: list[dict[str, Any]] = []
    expected: dict[tuple[str, int], tuple[str, bytes, bytes, str]] = {}
    for topic in tiers:
        copies, bad = interleave(config, topic, good, "JOURNAL")
        owed += copies
        expected.update({(topic, off): v for off, v in bad.items()})
    # the messages topic: the relay skips what it cannot read (the journal worker dead-letters
    # it, once) and relays the messages around it
    messages = config.kafka.topics.messages.name
    events = [make_event("alice@ext.example", [f"fresh{i}@corp.example"]) for i in range(3)]
    produce_at(
        config,
        messages,
        [
            (events[0]["event_id"].encode(), encode(MESSAGE_RECEIVED, events[0])),
            (b"junk", b"not avro"),
            (events[1]["event_id"].encode(), encode(MESSAGE_RECEIVED, events[1])),
            (b"wrong", encode(JOURNAL_COPY, make_copy())),
            (events[2]["event_id"].encode(), encode(MESSAGE_RECEIVED, events[2])),
        ],
    )

    worker = worker_threads(config, RelayHandler(config))
    rcpts = [c["journal_address"] for c in owed] + [f"fresh{i}@corp.example" for i in range(3)]
    wait_until(lambda: all(smtp_capture.messages_to(r) for r in rcpts), 60, f"{len(rcpts)} relayed")
    letters = dead_letters(config, len(expected))
    check_dead_letters(letters, expected)  # none for the messages topic: not the relay's to keep
    assert all(len(smtp_capture.messages_to(r)) == 1 for r in rcpts)
    assert len(smtp_capture.messages) == len(rcpts)
    group = config.kafka.relay_group
    wait_until(lambda: committed(config, group, messages) == 5, 10, "messages committed")
    per_tier = (len(owed) + len(expected)) // len(tiers)
    for topic in tiers:
        wait_until(
            lambda t=topic: committed(config, group, t) == per_tier, 10, f"{topic} committed"
        )
    assert worker.rc is None and worker.worker.ready


# -- the whole pipeline: a real delivery process, and the audit -----------------------------------

JOURNAL_IN = "journal-in@corp.example"


@pytest.fixture
def one_partition_config(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Config]:
    """Topics of one partition, so a retry record, the poison and the next retry record share
    one partition however their keys hash."""
    config = kafka_test_config(kafka_bootstrap, unique_suffix(request.node.name), partitions=1)
    yield config
    delete_topics(config)


def test_pipeline_dead_letters_poison_between_retries_and_the_audit_reports_poison(
    one_partition_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    config = pipeline_config(one_partition_config, smtp_capture.port)
    tier0 = tier_topics(config)[0]
    p = pipeline_factory(config).start()
    pid = p.stage_pid("delivery")

    def end_of(topic: str) -> int:
        consumer = make_consumer(config, f"probe-{unique_suffix()}", role="test-reader")
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
        finally:
            consumer.close()

    # message A: its copy fails once, so its retry record is the first on tier 0
    smtp_capture.script(JOURNAL_IN, "451 4.3.0 try later")
    a = p.send("partner@ext.example", ["bob@corp.example"], subject="A")
    smtp_capture.wait_for(1, timeout=60, to=JOURNAL_IN)
    assert end_of(tier0) == 1
    good = lambda **f: retried(make_copy(), **f)  # noqa: E731
    bad = poisons(good, "RELAY")
    offsets = produce_at(config, tier0, [(f"p{i}".encode(), v) for i, (_, v, _) in enumerate(bad)])
    assert offsets == list(range(1, 1 + len(bad)))
    # message B: fails once too; its retry record lands behind the poison
    dead_letters(config, len(bad))
    smtp_capture.script(JOURNAL_IN, "451 4.3.0 try later")
    b = p.send("partner@ext.example", ["carol@corp.example"], subject="B")
    smtp_capture.wait_for(2, timeout=60, to=JOURNAL_IN)
    assert end_of(tier0) == 2 + len(bad)
    check_dead_letters(
        read_dead_letters(config),
        {
            (tier0, off): (bad[i][0], f"p{i}".encode(), bad[i][1], bad[i][2])
            for i, off in enumerate(offsets)
        },
    )
    delivered = [m.data for m in smtp_capture.messages_to(JOURNAL_IN)]
    assert [sum(e.encode() in d for d in delivered) for e in (a, b)] == [1, 1]
    assert p.stage_pid("delivery") == pid, "the delivery stage was restarted"
    assert "exited with" not in p.log_file.read_text(errors="replace")

    # poison on every topic the audit reads: it names each one as a gap (a record it cannot
    # interpret may be a lost message or copy: exit 1) and still reconciles the rest
    topics = config.kafka.topics
    fed = {
        topics.messages.name: encode(JOURNAL_COPY, make_copy()),
        topics.journal.name: b"garbage",
        tier0: encode(MESSAGE_RECEIVED, make_event("x@ext.example", ["y@corp.example"])),
        topics.outcomes.name: encode(JOURNAL_COPY, make_copy()),
    }
    where = [(t, produce_at(config, t, [(b"poison", v)])[0]) for t, v in fed.items()]
    # and the poison above on tier 0 that is no JournalCopy at all
    where += [(tier0, offsets[i]) for i, (label, _, _) in enumerate(bad) if label in UNREADABLE]
    audit = p.audit("--grace", "0")
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert "Traceback" not in audit.stderr
    assert f"gaps: {len(where)}" in audit.stdout and "messages in window: 2" in audit.stdout
    for topic, offset in where:
        assert f"GAP unreadable: unreadable record {topic}[0]@{offset}" in audit.stdout, (
            audit.stdout
        )
