"""``mailjournal dlq list|replay``: inspect and re-queue dead letters.

The dead-letter topic is retained forever and never compacted. Replaying a dead letter writes,
in one Kafka transaction: the copy back on the journal topic (same copy id, so the same
Message-ID; attempt count and expiry window reset), a RETRYING outcome for the audit trail, and a
*replay marker* on the dead-letter topic (a DeadLetter record whose Kafka header
``mailjournal-replay-of`` names the replayed dead letter).

Every kind of dead letter replays: a journal, NDR or relay copy as above; a ``MessageReceived``
the journal worker could not journal goes back on the messages topic unchanged (same key, value
and record headers), so the worker decides it again -- after the fix that made it fail.

What is guaranteed: each dead letter is re-queued at most once, however often ``replay`` runs.
The replay uses a fixed transactional id, so a concurrent ``replay`` is fenced, and it reads the
markers only after fencing (every earlier replay transaction is then committed or aborted); a
replay that crashes before its commit wrote nothing. Delivery of the re-queued copy is then
at-least-once like any other copy. If it fails again it becomes a new dead letter, which can be
replayed in turn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from mailjournal.config import Config, add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_KAFKA, EXIT_NOTHING, EXIT_OK
from mailjournal.faults import fault_point
from mailjournal.kafka import make_admin, make_consumer, make_producer
from mailjournal.smtp.outcomes import OutcomeFields, make_outcome
from mailjournal.topics import relay_retry_topic_name
from schemas import (
    DEAD_LETTER,
    DELIVERY_OUTCOME,
    JOURNAL_COPY,
    MESSAGE_RECEIVED,
    DeadLetter,
    JournalCopyKind,
    OutcomeStatus,
    SchemaError,
    decode,
    encode,
    now_millis,
    to_millis,
)
from schemas.records import dead_letter

MARKER_HEADER = "mailjournal-replay-of"
KIND_HEADER = "mailjournal-dead-letter"  # "replay-marker" on markers


@dataclass
class Entry:
    partition: int
    offset: int
    record: dict[str, Any]
    replay_of: str | None = None  # set on replay markers
    replayed_by: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def is_marker(self) -> bool:
        return self.replay_of is not None

    def message(self) -> dict[str, Any] | None:
        """The dead-lettered ``MessageReceived``, when that is what the value holds."""
        with contextlib.suppress(SchemaError):
            return decode(self.record["value"], MESSAGE_RECEIVED)
        return None

    def summary(self) -> dict[str, Any]:
        copy: dict[str, Any] | None = None
        with contextlib.suppress(SchemaError):
            copy = decode(self.record["value"], JOURNAL_COPY)
        message = self.message() if copy is None else None
        at = self.record["at"]
        return {
            "id": self.id,
            "at": at.isoformat() if isinstance(at, datetime) else at,
            "copy_id": self.record.get("copy_id"),
            "event_id": self.record.get("event_id"),
            "kind": copy.get("kind") if copy else ("MESSAGE" if message else None),
            "journal_address": copy.get("journal_address") if copy else None,
            "reason": self.record["reason"],
            "source": f"{self.record['source_topic']}[{self.record['partition']}]"
            f"@{self.record['offset']}",
            "replayable": copy is not None or message is not None,
            "replayed": bool(self.replayed_by),
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
        }


def read_dead_letters(config: Config, *, timeout: float = 30.0) -> list[Entry]:
    """Every dead letter and replay marker, markers linked to the letters they replayed."""
    topic = config.kafka.topics.dead_letters.name
    admin = make_admin(config, role="dlq-admin")
    md = admin.list_topics(topic, timeout=timeout)
    if topic not in md.topics or md.topics[topic].error is not None:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"no topic {topic}"))
    partitions = sorted(md.topics[topic].partitions)
    consumer = make_consumer(
        config,
        f"{config.kafka.client_id_prefix}-dlq-reader-{uuid.uuid4().hex[:8]}",
        role="dlq-reader",
        extra={"enable.partition.eof": True},
    )
    entries: list[Entry] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end = dict.fromkeys(partitions, False)
        deadline = datetime.now(UTC).timestamp() + timeout
        while not all(at_end.values()):
            if datetime.now(UTC).timestamp() > deadline:
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, f"reading {topic} timed out")
                )
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end[msg.partition() or 0] = True
                    continue
                raise KafkaException(err)
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            at_end[partition] = False
            headers = dict(msg.headers() or [])
            try:
                record = decode(msg.value() or b"", DEAD_LETTER)
            except SchemaError:
                continue  # not ours to list
            replay_of = headers.get(MARKER_HEADER)
            if isinstance(replay_of, bytes):
                replay_of = replay_of.decode()
            entries.append(Entry(partition, offset, record, replay_of or None))
    finally:
        consumer.close()
    by_id = {e.id: e for e in entries if not e.is_marker}
    for e in entries:
        if e.replay_of and e.replay_of in by_id:
            by_id[e.replay_of].replayed_by.append(e.id)
    return entries


def open_dead_letters(entries: Iterable[Entry]) -> list[Entry]:
    return [e for e in entries if not e.is_marker and not e.replayed_by]


def select(entries: list[Entry], ids: list[str] | None) -> list[Entry]:
    if not ids:
        return entries
    wanted = set(ids)
    return [e for e in entries if e.id in wanted or e.record.get("copy_id") in wanted]


def requeued_copy(entry: Entry, now_ms: int) -> dict[str, Any]:
    """The dead-lettered copy as it goes back on the journal topic: same id, fresh attempts."""
    copy = decode(entry.record["value"], JOURNAL_COPY)
    copy.update(attempt=0, not_before=0, first_attempt_at=None, last_reply=None)
    copy["received_at"] = to_millis(copy.get("received_at")) or now_ms
    return copy


def replay(
    config: Config, ids: list[str] | None, *, dry_run: bool = False, timeout: float = 30.0
) -> tuple[list[Entry], list[Entry]]:
    """Re-queue the open dead letters (all, or those ``ids`` name by dead-letter or copy id).

    Returns (replayed, not replayable)."""
    producer = None
    if not dry_run:
        producer = make_producer(
            config,
            transactional_id=f"{config.kafka.client_id_prefix}-dlq-replay",
            role="dlq-replay",
        )
        producer.init_transactions(timeout)  # fences any concurrent replay first
    chosen = select(open_dead_letters(read_dead_letters(config, timeout=timeout)), ids)
    now = now_millis()
    replayable: list[tuple[Entry, dict[str, Any]]] = []
    messages: list[tuple[Entry, dict[str, Any]]] = []
    broken: list[Entry] = []
    for entry in chosen:
        try:
            replayable.append((entry, requeued_copy(entry, now)))
        except SchemaError:
            message = entry.message()
            if message is None:
                broken.append(entry)
            else:
                messages.append((entry, message))
    done = [e for e, _ in replayable] + [e for e, _ in messages]
    if producer is None or not done:
        return done, broken
    topics = config.kafka.topics
    producer.begin_transaction()
    for entry, message in messages:
        # unchanged, so it is the same accepted message (same event id, same copy ids)
        key = entry.record.get("key") or str(message["event_id"]).encode()
        producer.produce(
            topics.messages.name,
            key=key,
            value=entry.record["value"],
            headers=[
                *((k, v) for k, v in (entry.record.get("headers") or {}).items()),
                (MARKER_HEADER, entry.id.encode()),
            ],
        )
        producer.produce(
            topics.dead_letters.name,
            key=key,
            value=encode(
                DEAD_LETTER,
                _marker(entry, now, topics.dead_letters.name, key, None, str(message["event_id"])),
            ),
            headers=[(MARKER_HEADER, entry.id.encode()), (KIND_HEADER, b"replay-marker")],
        )
    for entry, copy in replayable:
        key = str(copy["copy_id"]).encode()
        # the header tells the audit this is a replay, not a second emission of the copy
        # a relayed original goes back to the relay (its first retry tier), not to journaling
        target = topics.journal.name
        if copy.get("kind") == JournalCopyKind.RELAY:
            target = relay_retry_topic_name(config, 0)
        producer.produce(
            target,
            key=key,
            value=encode(JOURNAL_COPY, copy),
            headers=[(MARKER_HEADER, entry.id.encode())],
        )
        outcome = make_outcome(
            copy,
            OutcomeFields(
                OutcomeStatus.RETRYING,
                int(decode(entry.record["value"], JOURNAL_COPY).get("attempt") or 0),
                f"replayed from dead letter {entry.id}",
                now,
                next_attempt_ms=now,
            ),
        )
        producer.produce(topics.outcomes.name, key=key, value=encode(DELIVERY_OUTCOME, outcome))
        marker = _marker(
            entry, now, topics.dead_letters.name, key, copy["copy_id"], copy["event_id"]
        )
        producer.produce(
            topics.dead_letters.name,
            key=key,
            value=encode(DEAD_LETTER, marker),
            headers=[(MARKER_HEADER, entry.id.encode()), (KIND_HEADER, b"replay-marker")],
        )
        fault_point("dlq.replay.mid_batch")
    producer.commit_transaction(timeout)
    return done, broken


def _marker(
    entry: Entry, now: int, topic: str, key: bytes, copy_id: str | None, event_id: str | None
) -> DeadLetter:
    """The replay marker of ``entry`` (a DeadLetter record with an empty value)."""
    return dead_letter(
        at=now,
        reason=f"replayed dead letter {entry.id}",
        source_topic=topic,
        partition=entry.partition,
        offset=entry.offset,
        key=key,
        value=b"",
        headers={},
        copy_id=copy_id,
        event_id=event_id,
    )


# -- CLI --------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("list", "list dead letters not yet replayed"),
        ("replay", "re-queue dead letters for delivery (each at most once)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_argument(p)
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds per Kafka step")
        if name == "list":
            p.add_argument("--all", action="store_true", help="also replayed ones and markers")
        else:
            p.add_argument(
                "--id",
                action="append",
                dest="ids",
                metavar="ID",
                help="dead-letter id or copy id (repeatable); default: every open dead letter",
            )
            p.add_argument("--dry-run", action="store_true", help="show what would be replayed")


def _print(entries: Iterable[Entry], as_json: bool, prefix: str = "") -> None:
    for e in entries:
        s = e.summary()
        if e.is_marker:
            s["replay_of"] = e.replay_of
        if as_json:
            print(json.dumps(s, default=str))
        else:
            state = "marker" if e.is_marker else ("replayed" if e.replayed_by else "open")
            print(
                f"{prefix}{s['id']}  {s['at']}  {state:8}  {s['kind'] or '-':7}  "
                f"copy={s['copy_id']}  to={s['journal_address']}  from={s['source']}  "
                f"reason={s['reason']}"
            )


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        if args.action == "list":
            entries = read_dead_letters(config, timeout=args.timeout)
            shown = entries if args.all else open_dead_letters(entries)
            _print(shown, args.json)
            print(f"{len(open_dead_letters(entries))} open dead letter(s)", file=sys.stderr)
            return EXIT_OK
        done, broken = replay(config, args.ids, dry_run=args.dry_run, timeout=args.timeout)
    except KafkaException as exc:
        print(f"dlq: Kafka at {config.kafka.bootstrap_servers}: {exc}", file=sys.stderr)
        return EXIT_KAFKA
    verb = "would replay" if args.dry_run else "replayed"
    _print(done, args.json, prefix="" if args.json else f"{verb}: ")
    for e in broken:
        print(
            f"not replayable (value is neither a JournalCopy nor a MessageReceived): {e.id}",
            file=sys.stderr,
        )
    print(f"{verb} {len(done)} dead letter(s)", file=sys.stderr)
    if args.ids and not done and not broken:
        return EXIT_NOTHING
    return EXIT_OK
