"""Replay: re-journal the accepted messages of a past window from the messages topic.

``mailjournal replay --since T --until T [--direction D] [--to ADDRESS] [--dry-run]`` reads
the window's records (``offsets_for_times`` per partition: from the first record at or after
``--since`` to the first at or after ``--until``), decides each message with today's policy
(:class:`~journal_worker.decide.Decider`, the directory included) and produces its copies to the
journal topic, where delivery sends them like any other. With ``--to`` every message that
today's policy journals owes one copy to that address (its recipients merged); with
``--direction`` only copies of that direction are owed.

Replay copies are new copies: their ids are the live copy's id + ``.replay-<run id>`` (unique
per run), they carry ``replay_run`` (the ``X-MailJournal-Replay`` header of the report) and the
audit counts them apart (:mod:`audit.replays`).

Exactly once, resumable: the journal worker's transactional loop
(:class:`~journal_worker.worker.JournalWorker`), with the run's own consumer group and
transactional id (``<journal group>-replay-<run id>``). Each batch's copies and the group's
offsets commit together, so a run killed anywhere -- fault points ``replay.txn.after_produce``
and ``replay.txn.before_commit`` -- and started again with the same arguments (the same run id)
goes on after the last committed batch: its interrupted batch was aborted, nothing is produced
twice. The messages before that point are decided again, not produced, so the run report at the
end covers the whole window.

The run id: ``--run-id``, else derived from the arguments, so the same command resumes (and,
once complete, produces nothing); pass a new ``--run-id`` to replay the same window again.

Refusal: a window that starts before the earliest retained record of a partition whose older
records were deleted (``kafka.topics.messages.retention_ms``) is refused, naming the limit:
part of the window is gone, and a replay that silently covered only the rest would look
complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from journal_worker.decide import (
    Covered,
    Decider,
    Decision,
    Plan,
    PlannedCopy,
    journal_copy_record,
)
from journal_worker.worker import JournalWorker, Record, _Item, _Tallies
from mailjournal.addresses import key
from mailjournal.config import Config
from mailjournal.consumer.fetch import fetch
from mailjournal.faults import fault_point
from mailjournal.kafka import make_consumer, make_producer
from mailjournal.times import iso
from schemas import JOURNAL_COPY
from schemas.events import make_copy_id

log = logging.getLogger(__name__)

SKIP_DIRECTION = "not_in_direction"  # --direction: none of its copies is of that direction
SKIP_UNREADABLE = "unreadable_record"  # the live worker dead-lettered it; replay skips it
WATERMARK_TIMEOUT = 30.0


@dataclass(frozen=True)
class ReplayRequest:
    since_ms: int
    until_ms: int
    direction: str | None = None  # "inbound", "outbound", "internal"
    to: str | None = None
    dry_run: bool = False
    run_id: str | None = None

    @property
    def run(self) -> str:
        """The run id: given, or derived from the arguments (the same command resumes)."""
        if self.run_id:
            return self.run_id
        basis = f"{self.since_ms}|{self.until_ms}|{self.direction or ''}|{key(self.to or '')}"
        return hashlib.sha256(basis.encode()).hexdigest()[:12]


class RetentionRefused(Exception):
    """The window starts before the earliest retained message of a partition that lost some."""


@dataclass
class Window:
    topic: str
    starts: dict[int, int]  # partition -> first offset of the window
    ends: dict[int, int]  # partition -> offset after the window

    @property
    def size(self) -> int:
        return sum(max(0, self.ends[p] - self.starts[p]) for p in self.starts)


def window_offsets(
    consumer: Consumer, topic: str, since_ms: int, until_ms: int, retention_ms: int
) -> Window:
    """The window's offsets per partition of ``topic``; :class:`RetentionRefused` when it
    starts before what the topic still holds."""
    meta = consumer.list_topics(topic, timeout=WATERMARK_TIMEOUT).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaException(f"topic {topic}: {meta.error if meta else 'does not exist'}")
    partitions = sorted(meta.partitions)
    marks = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=WATERMARK_TIMEOUT)
        for p in partitions
    }

    def at(ms: int) -> dict[int, int]:
        """The first offset at or after ``ms`` per partition (the end when there is none)."""
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, ms) for p in partitions], timeout=WATERMARK_TIMEOUT
        )
        return {
            tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found
        }

    first, after = at(since_ms), at(until_ms)
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for p in partitions:
        low = marks[p][0]
        start, end = first[p], after[p]
        if low > 0 and start == low:
            earliest = _timestamp_at(consumer, topic, p, low)
            if earliest is not None and since_ms < earliest:
                raise RetentionRefused(
                    f"the window starts at {iso(since_ms)}, before the earliest message still "
                    f"retained in {topic}[{p}] ({iso(earliest)}): older messages were deleted "
                    f"(kafka.topics.messages.retention_ms = {retention_ms} ms, "
                    f"{retention_ms / 86_400_000:g} days); replay from {iso(earliest)} or later"
                )
        starts[p], ends[p] = start, max(start, end)
    return Window(topic, starts, ends)


def _timestamp_at(consumer: Consumer, topic: str, partition: int, offset: int) -> int | None:
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        for msg in fetch(consumer, 1, WATERMARK_TIMEOUT):
            if msg.error() is None:
                return int(msg.timestamp()[1])
        return None
    finally:
        consumer.unassign()


# -- what a replay owes (pure) ----------------------------------------------------------------


def replay_copies(
    decision: Decision, request: ReplayRequest
) -> tuple[tuple[PlannedCopy, ...], str | None]:
    """The replay copies of a live ``decision`` and, when there is none, why."""
    if not decision.copies:
        return (), decision.skip_reason or "no_copy_owed"
    copies = decision.copies
    if request.direction:
        wanted = request.direction.upper()
        copies = tuple(c for c in copies if any(str(d) == wanted for d in c.directions))
        if not copies:
            return (), SKIP_DIRECTION
    suffix = f".replay-{request.run}"
    if request.to is None:
        return tuple(dataclasses.replace(c, copy_id=c.copy_id + suffix) for c in copies), None
    recipients: dict[str, Covered] = {}
    for c in copies:
        for r in c.recipients:
            recipients.setdefault(key(r.address), r)
    first = copies[0]
    merged = PlannedCopy(
        copy_id=make_copy_id(decision.event_id, request.to) + suffix,
        journal_address=request.to,
        ndr_address=first.ndr_address,
        directions=tuple(dict.fromkeys(d for c in copies for d in c.directions)),
        sources=tuple(dict.fromkeys(s for c in copies for s in c.sources)),
        format=first.format,
        recipients=tuple(recipients.values()),
    )
    return (merged,), None


@dataclass
class ReplayReport:
    run_id: str
    request: ReplayRequest
    window: Window
    resumed_from: dict[int, int] = field(default_factory=dict)  # partition -> committed offset
    owed: dict[tuple[int, int], int] = field(default_factory=dict)  # record -> copies owed
    skipped: dict[tuple[int, int], str] = field(default_factory=dict)  # record -> why
    complete: bool = False  # the whole window was decided (and its copies committed)

    @property
    def read(self) -> int:
        return len(self.owed) + len(self.skipped)

    @property
    def copies_owed(self) -> int:
        return sum(self.owed.values())

    @property
    def produced_before(self) -> int:
        """Copies an earlier, interrupted invocation committed (before ``resumed_from``)."""
        return sum(n for (p, o), n in self.owed.items() if o < self.resumed_from.get(p, -1))

    @property
    def produced_now(self) -> int:
        """Copies this invocation committed: every live batch's transaction committed (or was
        aborted and done again) before the loop moved past it."""
        if self.request.dry_run:
            return 0
        return self.copies_owed - self.produced_before

    def render(self) -> str:
        r = self.request
        target = f"to {r.to}" if r.to else "to today's journal policy"
        if r.direction:
            target += f", direction {r.direction}"
        lines = [
            f"replay run {self.run_id}{' (dry run)' if r.dry_run else ''}: "
            f"{iso(r.since_ms)} .. {iso(r.until_ms)} from {self.window.topic} ({target})",
            f"messages read: {self.read}",
            f"copies owed: {self.copies_owed}",
        ]
        if r.dry_run:
            lines.append("copies sent: 0 (dry run)")
        else:
            lines.append(
                f"copies sent: {self.produced_now + self.produced_before} "
                f"({self.produced_before} by an earlier, interrupted invocation)"
            )
        skipped = Counter(self.skipped.values())
        lines.append(f"messages skipped: {sum(skipped.values())}")
        lines += [f"  {why}: {n}" for why, n in sorted(skipped.items())]
        if not self.complete:
            lines.append("INCOMPLETE: stopped before the end of the window; run it again")
        return "\n".join(lines)


class _ReplayDecider:
    """Today's decision of each message, turned into its replay copies; records what each
    window record owes (by position: idempotent when a rewound batch is decided again)."""

    def __init__(self, decider: Decider, request: ReplayRequest, report: ReplayReport):
        self._decider = decider
        self._request = request
        self._report = report
        self.position: tuple[int, int] | None = None  # the record being decided

    def plan(self, event: Mapping[str, Any]) -> Plan:
        return self._decider.plan(event)

    def decide(self, plan: Plan, answers: Any) -> Decision:
        decision = self._decider.decide(plan, answers)
        copies, why = replay_copies(decision, self._request)
        assert self.position is not None
        if why is None:
            self._report.owed[self.position] = len(copies)
        else:
            self._report.skipped[self.position] = why
        return dataclasses.replace(decision, copies=copies, skip_reason=why)


class ReplayWorker(JournalWorker):
    """The journal worker's decide-and-transact loop over one window, with its own group."""

    def __init__(self, config: Config, request: ReplayRequest):
        run = request.run
        super().__init__(config, instance_id=f"replay-{run}", directory=None)
        self.request = request
        self.group = f"{config.kafka.journal_group}-replay-{run}"
        self.window: Window | None = None
        self.report: ReplayReport | None = None
        self._replay_decider: _ReplayDecider | None = None

    # -- the transaction's crash sites --------------------------------------------------------

    def _after_produce(self) -> None:
        fault_point("replay.txn.after_produce")

    def _before_commit(self) -> None:
        fault_point("replay.txn.before_commit")

    # -- records ------------------------------------------------------------------------------

    def _records_for(
        self, item: _Item, answers: dict[Any, list[str]], tallies: _Tallies
    ) -> list[Record]:
        position = (int(item.msg.partition() or 0), int(item.msg.offset() or 0))
        assert self._replay_decider is not None and self.report is not None
        self._replay_decider.position = position
        if item.poison is not None:  # the live worker dead-lettered it already
            self.report.skipped[position] = SKIP_UNREADABLE
            return []
        records = super()._records_for(item, answers, tallies)
        if position not in self.report.owed and position not in self.report.skipped:
            # decided by the envelope-only fallback (the decider raised)
            self.report.owed[position] = len(records)
        return records

    def _copy_record(
        self, event: dict[str, Any], copy: PlannedCopy, *, fallback: bool = False
    ) -> Record:
        suffix = f".replay-{self.request.run}"
        if not copy.copy_id.endswith(suffix):  # a fallback decision's copy
            to = self.request.to
            copy = dataclasses.replace(
                copy,
                copy_id=(make_copy_id(str(event["event_id"]), to) if to else copy.copy_id) + suffix,
                journal_address=to or copy.journal_address,
            )
        record = journal_copy_record(event, copy, header_text=not fallback)
        record["replay_run"] = self.request.run
        return (self.journal_topic, copy.copy_id, self.codec.encode(JOURNAL_COPY, record))

    # -- the run ------------------------------------------------------------------------------

    def replay(self) -> ReplayReport:
        """Replay the window (or the rest of it after an interrupted invocation)."""
        config, request = self.config, self.request
        topic = self.messages_topic
        # the journal worker's byte bound on a batch: a window of 1 MB messages is replayed too
        self.consumer = consumer = make_consumer(
            config, self.group, role="replay", prefetch_bytes=config.journal.prefetch_max_bytes
        )
        window = self.window = window_offsets(
            consumer,
            topic,
            request.since_ms,
            request.until_ms,
            config.kafka.topics.messages.retention_ms,
        )
        report = self.report = ReplayReport(request.run, request, window)
        self._replay_decider = _ReplayDecider(self.decider, request, report)
        self.decider = self._replay_decider  # type: ignore[assignment]
        if not request.dry_run:
            # first: a killed invocation's open transaction is aborted here (same id); until
            # then its pending offsets hold back the committed-offset read below
            self.producer = make_producer(
                config, transactional_id=self.transactional_id, role="replay"
            )
            self._txn_call("init_transactions", self.producer.init_transactions, 30)
        live = [p for p in window.starts if window.ends[p] > window.starts[p]]
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in live], timeout=WATERMARK_TIMEOUT
        )
        report.resumed_from = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        if report.resumed_from:
            log.info("replay %s: resuming after %s", request.run, report.resumed_from)
        failed = True
        try:
            self._loop(window, live, report)
            failed = False
        finally:
            self._close(failed)
        return report

    def _loop(self, window: Window, live: list[int], report: ReplayReport) -> None:
        consumer = self.consumer
        assert consumer is not None
        topic = window.topic
        consumer.assign([TopicPartition(topic, p, window.starts[p]) for p in live])
        remaining = set(live)
        while remaining and not self._stop.is_set():
            msgs = fetch(consumer, self.batch_max, self.batch_timeout)
            batch: list[Message] = []
            counted: list[Message] = []
            for msg in msgs:
                if not self._usable(msg):
                    continue
                p, o = int(msg.partition() or 0), int(msg.offset() or 0)
                if p not in remaining or o >= window.ends[p]:
                    continue
                if self.request.dry_run or o < report.resumed_from.get(p, -1):
                    counted.append(msg)
                else:
                    batch.append(msg)
            if counted:
                self._count_only(counted)
            if batch:
                self._process(batch)
            positions = consumer.position([TopicPartition(topic, p) for p in remaining])
            for tp in positions:
                if tp.offset >= window.ends[tp.partition]:
                    remaining.discard(tp.partition)
                    consumer.pause([TopicPartition(topic, tp.partition)])
        report.complete = not remaining

    def _count_only(self, msgs: Sequence[Message]) -> None:
        """Decide without producing: a dry run, or the part an earlier invocation produced."""
        items = [self._parse(m) for m in msgs]
        n, answers = self._answers(items)
        if n < len(items):
            raise KafkaException("directory unavailable: run the replay again later")
        tallies = _Tallies()
        for item in items:
            self._records_for(item, answers, tallies)


def replay(config: Config, request: ReplayRequest) -> ReplayReport:
    return ReplayWorker(config, request).replay()
