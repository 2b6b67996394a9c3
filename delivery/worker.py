"""The delivery worker: journal topic and retry tiers in, SMTP out, outcomes and offsets recorded.

Threads:

- the **main thread** owns the Kafka consumer: it fetches records, hands them to the SMTP pool,
  pauses and resumes partitions, and commits offsets;
- **SMTP threads** (``delivery.concurrency``, one reused session each) send a copy, decide its
  fate and produce what follows from it (outcome, retry record, NDR, dead letter);
- a **producer thread** serves the producer's delivery reports.

Crash safety (at-least-once, never a lost copy): a record's offset becomes committable only once
every record it gave rise to -- the outcome, the retry record, the NDR, the dead letter -- has been
acknowledged by Kafka (``acks=all``, idempotent producer). Commits cover, per partition, the
records below the lowest one not yet final, so a crash anywhere repeats at most the records
after the last commit: a duplicate send (same Message-ID) or a duplicate retry record, never a gap.

Retry tiers: a partition whose head record is not yet due is paused and rewound to that record
(it is re-fetched when due); the record is not kept in memory, and nothing polls in a loop. The
journal topic and the retry tiers are fetched by the same consumer, but each partition pauses on
its own, and retried records may occupy at most half of ``delivery.max_inflight``: fresh traffic
always has room. A head waits at most its tier's longest delay (delay + jitter), whatever its
``not_before`` says, and only once: a record claiming to be due in ten years cannot hold the
partition behind it.

Poison records: a record that is no JournalCopy, or a copy that breaks an invariant every writer
keeps (:func:`copy_problem`), is dead-lettered with the reason and its topic, partition and
offset, and the partition moves on.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from delivery import metrics
from delivery.ndr import Failure, build_ndr, make_ndr_copy
from delivery.report import build_message, envelope_sender
from delivery.retry import tier_topic, tier_topics
from mailjournal.config import Config
from mailjournal.faults import fault_point
from mailjournal.kafka import make_consumer, make_producer
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.outcomes import (
    Action,
    Decision,
    OutcomeFields,
    SmtpResult,
    decide,
    make_outcome,
    retry_copy,
)
from relay.routing import (
    RelaySender,
    Resolver,
    relay_copies,
    relay_delivery_config,
    relay_tier_topics,
    with_recipients,
)
from relay.sender_dsn import RecipientFailure, dsn_recipients, make_dsn_copy
from schemas import (
    DEAD_LETTER,
    DELIVERY_OUTCOME,
    JOURNAL_COPY,
    MESSAGE_RECEIVED,
    SchemaError,
    decode,
    encode,
    new_event_id,
    now_millis,
)
from schemas.events import to_millis

log = logging.getLogger(__name__)

TP = tuple[str, int]

COMMIT_INTERVAL_SECONDS = 0.5
POLL_SECONDS = 0.1
PAUSE_WHEN_FULL_SECONDS = 1.0  # full this long: pause the partitions too (_apply_backpressure)
WAITING_GAUGE_INTERVAL_SECONDS = 5.0
MAX_BATCH = 500
# a first attempt this far in the future is no clock skew between hosts but a broken record
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
KINDS = {"journal": ("JOURNAL", "NDR"), "relay": ("RELAY",)}


def copy_problem(copy: dict[str, Any], mode: str, now_ms: int) -> str | None:
    """Why ``copy`` is poison for the stage in ``mode`` (no writer of ours produces it), or None.

    Such a copy is dead-lettered, not sent: a kind of the other stage would go to the wrong
    place (a RELAY copy through the journal smart host), a negative attempt count or a first
    attempt in the future would never expire. ``dlq replay`` resets the attempt fields."""
    kind = str(copy.get("kind") or "JOURNAL")
    if kind not in KINDS[mode]:
        stage = "delivery" if mode == "journal" else "relay"
        return f"kind {kind} is not for the {stage} stage (it sends {'/'.join(KINDS[mode])})"
    if not copy.get("copy_id") or not copy.get("event_id"):
        return "empty copy_id or event_id"
    if kind == "RELAY" and not (copy.get("relay") or {}).get("recipients"):
        return "a RELAY copy without recipients in its relay envelope"
    attempt = int(copy.get("attempt") or 0)
    if attempt < 0:
        return f"attempt is {attempt}, below 0"
    first = copy.get("first_attempt_at")
    if first is not None and to_millis(first) > now_ms + MAX_CLOCK_SKEW_MS:
        return f"first_attempt_at {first} is in the future: the copy would never expire"
    return None


class PartitionState:
    """Offsets of one assigned partition: which records are in flight, what may be committed."""

    __slots__ = ("base", "committed", "done", "next_offset", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # offsets handed over, in order
        self.done: set[int] = set()  # finished offsets not yet at the head of ``pending``
        self.next_offset: int | None = None  # after the last record handed over
        self.committed: int | None = None
        self.base: int | None = None  # the first offset handed over (before any commit)

    def add(self, offset: int) -> None:
        if self.base is None:
            self.base = offset
        self.pending.append(offset)
        self.next_offset = offset + 1

    def skip(self, offset: int) -> None:
        """A record that needed no work (final at once)."""
        self.add(offset)
        self.finish(offset)

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())

    def rewind(self, offset: int) -> None:
        """The record at ``offset`` will be fetched again (a retry head not yet due)."""
        self.next_offset = offset

    def position(self) -> int | None:
        """The offset to commit: the lowest record not final, or the one after the last."""
        return self.pending[0] if self.pending else self.next_offset

    @property
    def inflight(self) -> int:
        return len(self.pending)

    @property
    def uncommitted(self) -> int:
        """Records handed over since the last commit, finished or not: what a crash now would
        hand over again (offsets, so a transaction marker in between counts too)."""
        start = self.committed if self.committed is not None else self.base
        if start is None or self.next_offset is None:
            return 0
        return max(0, self.next_offset - start)


@dataclass
class Job:
    """One consumed record on its way to being final."""

    state: PartitionState
    source: str  # "journal" or "retry"
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    acks_pending: int = 0


@dataclass
class Production:
    topic: str
    key: str
    value: bytes
    what: str  # for logs


@dataclass
class Stats:
    """Counters for tests and benchmarks (Prometheus has the real ones)."""

    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    ndrs: int = 0
    dead_letters: int = 0
    finished: int = 0  # records whose results Kafka acknowledged (final or handed to a retry)
    by_status: dict[str, int] = field(default_factory=dict)


class DeliveryWorker:
    """``mode="journal"``: journal copies from the journal topic to the smart host (the delivery
    stage). ``mode="relay"``: originals from the messages topic (its own consumer group) to their
    next hops, with the relay's retry tiers and DSNs to senders (the relay stage, inline mode).
    One mechanism, two uses: fetching, concurrency, offsets, retry tiers, expiry and outcomes are
    the same code."""

    def __init__(
        self,
        config: Config,
        *,
        mode: str = "journal",
        smtp: SmtpClient | RelaySender | None = None,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
        consumer_extra: dict[str, Any] | None = None,
        producer_extra: dict[str, Any] | None = None,
    ):
        if mode not in ("journal", "relay"):
            raise ValueError(f"unknown delivery mode {mode!r}")
        self.mode = mode
        self.config = config
        topics = config.kafka.topics
        self.outcomes_topic = topics.outcomes.name
        self.dead_letter_topic = topics.dead_letters.name
        if mode == "relay":
            self.cfg = relay_delivery_config(config)
            self.journal_topic = topics.messages.name  # "journal" source = fresh input
            self.retry_topics = relay_tier_topics(config)
            self._group = config.kafka.relay_group
            self._relay_listeners = config.relay_listeners()
            self.smtp: SmtpClient | RelaySender = smtp or RelaySender(
                config, self.cfg, resolver=resolver
            )
        else:
            self.cfg = config.delivery
            self.journal_topic = topics.journal.name
            self.retry_topics = tier_topics(config)
            self._group = config.kafka.delivery_group
            self.smtp = smtp or SmtpClient(self.cfg)
        self._source = {self.journal_topic: "journal", **dict.fromkeys(self.retry_topics, "retry")}
        # the longest a head of each tier may wait: its delay with the largest jitter
        self._max_wait_ms = {
            t: round(d * (1 + self.cfg.retry_jitter) * 1000)
            for t, d in zip(self.retry_topics, self.cfg.retry_delays_seconds, strict=True)
        }
        self._rng = rng or random.Random()
        self._consumer_extra = consumer_extra or {}
        self._producer_extra = producer_extra or {}

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._states: dict[TP, PartitionState] = {}
        self._inflight = {"journal": 0, "retry": 0}
        self._assigned: set[TP] = set()
        self._paused: set[TP] = set()
        self._held: dict[TP, int] = {}  # retry partition -> due time (ms) of its head
        self._held_offset: dict[TP, int] = {}  # retry partition -> offset of its held head
        self._released: dict[TP, int] = {}  # the head whose wait is over: sent when fetched
        self._due: list[tuple[int, TP]] = []
        self._full = {"all": False, "retry": False}
        self._full_since: float | None = None  # when max_inflight was reached (None: not full)
        self._running = False
        self.stats = Stats()
        self.gauge_interval_seconds = WAITING_GAUGE_INTERVAL_SECONDS

        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._poller: threading.Thread | None = None
        self._poller_stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._running and self._fatal is None

    def stop(self) -> None:
        """Graceful stop (SIGTERM): stop fetching, finish in-flight sends, commit, return."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> int:
        """Run until :meth:`stop`; 0 after a graceful stop, 1 after a fatal Kafka error."""
        role = "delivery" if self.mode == "journal" else "relay"
        self._producer = make_producer(self.config, role=role, extra=self._producer_extra)
        self._consumer = make_consumer(
            self.config, self._group, role=role, extra=self._consumer_extra
        )
        self._executor = ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="smtp")
        self._poller = threading.Thread(target=self._poll_producer, name="producer", daemon=True)
        self._poller.start()
        self._consumer.subscribe(
            [self.journal_topic, *self.retry_topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._running = True
        log.info(
            "%s: consuming %s and %d retry tiers, smart host %s, %d sessions",
            self.mode,
            self.journal_topic,
            len(self.retry_topics),
            self.smtp.address,
            self.cfg.concurrency,
        )
        last_commit = last_gauge = time.monotonic()
        try:
            while not self._stop.is_set() and self._fatal is None:
                self._iteration()
                now = time.monotonic()
                if now - last_commit >= COMMIT_INTERVAL_SECONDS:
                    self._commit(self._assigned)
                    last_commit = now
                if now - last_gauge >= self.gauge_interval_seconds:
                    self._update_waiting_gauge()
                    last_gauge = now
        finally:
            self._shutdown()
        if self._fatal is not None:
            log.error("delivery: stopped on a fatal error: %s", self._fatal)
            return 1
        return 0

    def _shutdown(self) -> None:
        self._running = False
        consumer = self._consumer
        assert consumer is not None and self._executor is not None and self._producer is not None
        if self._fatal is None:
            # stop fetching; let in-flight sends finish and their results reach Kafka
            self._set_paused(set(self._assigned))
            self._wait_for(lambda: self._total_inflight() == 0, self._drain_seconds())
        self._commit(self._assigned)
        try:
            consumer.close()  # leaves the group; on_revoke commits again (a no-op by now)
        except KafkaException as exc:
            log.warning("delivery: closing the consumer: %s", exc)
        self._executor.shutdown(wait=self._fatal is None, cancel_futures=True)
        self._poller_stop.set()
        if self._poller is not None:
            self._poller.join()
        self._producer.flush(30)
        self._producer = self._consumer = None  # librdkafka handles go now, not at GC
        self.smtp.close()
        log.info("delivery: stopped")

    def _drain_seconds(self) -> float:
        # worst case for one attempt and its NDR: connect plus a few commands, twice
        return 2 * (self.cfg.connect_timeout_seconds + 4 * self.cfg.command_timeout_seconds) + 30

    def _poll_producer(self) -> None:
        assert self._producer is not None
        while not self._poller_stop.is_set():
            self._producer.poll(0.1)

    # -- the main loop -----------------------------------------------------------------------

    def _iteration(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._resume_due()
        self._apply_backpressure()
        # the window bounds the records a crash would send again: in flight, and finished but
        # not yet committed; commit as soon as half of it is finished work, not only at the
        # interval, so a fast smart host is not held back by the commit cadence
        if self._uncommitted() - self._total_inflight() >= self.cfg.max_inflight // 2:
            self._commit(self._assigned)
        room = self.cfg.max_inflight - self._uncommitted()
        if room <= 0:
            with self._cond:
                self._cond.wait(0.05)
            if not self._full["all"]:
                return  # a short burst: hold off without pausing (see _apply_backpressure)
            room = 1  # keep serving rebalances; a record fetched before the pause is taken
            timeout = 0.0
        else:
            timeout = self._poll_timeout()
        try:
            messages = self._fetch(consumer, min(room, MAX_BATCH), timeout)
        except KafkaException as exc:
            self._fail(f"consuming: {exc}")
            return
        for msg in messages:
            self._on_message(msg)

    @staticmethod
    def _fetch(consumer: Consumer, n: int, timeout: float) -> list[Message]:
        """Up to ``n`` records without waiting when some are buffered; otherwise wait up to
        ``timeout`` for the first and take what came with it. (librdkafka's batch consume waits
        for all ``n`` or the timeout: with a backlog of fewer than ``n`` buffered records every
        call sat out the timeout, capping delivery at about ``max_inflight`` per 100 ms.)"""
        messages = consumer.consume(num_messages=n, timeout=0)
        if messages or timeout <= 0:
            return messages
        messages = consumer.consume(num_messages=1, timeout=timeout)
        if messages and n > 1:
            messages.extend(consumer.consume(num_messages=n - 1, timeout=0))
        return messages

    def _poll_timeout(self) -> float:
        if self._due:
            wait = (self._due[0][0] - now_millis()) / 1000
            return max(0.0, min(POLL_SECONDS, wait))
        return POLL_SECONDS

    def _total_inflight(self) -> int:
        return self._inflight["journal"] + self._inflight["retry"]

    def _uncommitted(self) -> int:
        with self._cond:
            return sum(
                state.uncommitted for tp, state in self._states.items() if tp in self._assigned
            )

    def _on_message(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                self._fail(f"consumer: {err}")
            else:
                log.warning("delivery: consumer: %s", err)
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        tp = (topic, partition)
        if tp not in self._assigned:
            return  # fetched before a revocation: the partition's new owner reads it
        if tp in self._held:
            return  # behind a retry head that is not due: fetched again after it
        state = self._states.setdefault(tp, PartitionState())
        source = self._source.get(topic, "journal")
        value = msg.value() or b""
        job = Job(
            state,
            source,
            topic,
            partition,
            offset,
            msg.key(),
            value,
            _headers(msg),
        )
        if self.mode == "relay" and source == "journal":
            event = self._relayable(job)
            if event is not None:
                self._submit(job, event, None)
            return
        try:
            copy = decode(value, JOURNAL_COPY)
        except SchemaError as exc:
            self._submit(job, None, f"undecodable JournalCopy: {exc}")
            return
        now = now_millis()
        problem = copy_problem(copy, self.mode, now)
        if problem is not None:
            self._submit(job, copy, f"invalid JournalCopy: {problem}")
            return
        if source == "retry":
            released = self._released.pop(tp, None) == offset
            due = to_millis(copy.get("not_before"))
            if due > now and not released:
                longest = now + self._max_wait_ms[topic]
                if due > longest:
                    log.warning(
                        "%s: %s[%d]@%d: not_before %s is beyond the tier's longest delay; "
                        "it waits %.1f s",
                        self.mode,
                        topic,
                        partition,
                        offset,
                        copy.get("not_before"),
                        (longest - now) / 1000,
                    )
                self._hold(tp, offset, min(due, longest))
                return
        self._submit(job, copy, None)

    def _relayable(self, job: Job) -> dict[str, Any] | None:
        """The MessageReceived of a relay listener, or None (the record is done at once)."""
        try:
            event = decode(job.value, MESSAGE_RECEIVED)
        except SchemaError as exc:
            # the journal worker dead-letters it (one dead letter per bad record, not two)
            log.error(
                "relay: undecodable message at %s[%d]@%d: %s",
                job.topic,
                job.partition,
                job.offset,
                exc,
            )
            event = None
        if event is None or event.get("listener") not in self._relay_listeners:
            with self._cond:
                job.state.skip(job.offset)
            return None
        return event

    def _submit(self, job: Job, copy: dict[str, Any] | None, error: str | None) -> None:
        assert self._executor is not None
        with self._cond:
            job.state.add(job.offset)
            self._inflight[job.source] += 1
        metrics.INFLIGHT.labels(job.source).inc()
        self._executor.submit(self._run_job, job, copy, error)

    # -- retry heads -------------------------------------------------------------------------

    def _hold(self, tp: TP, offset: int, due_ms: int) -> None:
        """Pause a retry partition whose head is not due and rewind it to that head."""
        consumer = self._consumer
        assert consumer is not None
        self._held[tp] = due_ms
        self._held_offset[tp] = offset
        heapq.heappush(self._due, (due_ms, tp))
        self._states.setdefault(tp, PartitionState()).rewind(offset)
        if tp not in self._paused:
            consumer.pause([TopicPartition(tp[0], tp[1])])
            self._paused.add(tp)
        try:
            consumer.seek(TopicPartition(tp[0], tp[1], offset))
        except KafkaException as exc:
            # cannot rewind: the record would be skipped. Stop before committing past it.
            self._fail(f"seeking {tp[0]}[{tp[1]}] back to {offset}: {exc}")

    def _resume_due(self) -> None:
        now = now_millis()
        while self._due and self._due[0][0] <= now:
            due, tp = heapq.heappop(self._due)
            if self._held.get(tp) == due:
                del self._held[tp]
                self._released[tp] = self._held_offset.pop(tp)

    # -- pausing -----------------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        total, retry = self._uncommitted(), self._inflight["retry"]
        cap, retry_cap = self.cfg.max_inflight, max(1, self.cfg.max_inflight // 2)
        # Full: the main loop stops taking records. Pausing the partitions as well drops what
        # librdkafka has prefetched (bounded by queued.max.messages.kbytes) and resuming fetches
        # it again -- at every burst that capped delivery at ~550 copies/s with idle SMTP
        # threads -- so the partitions are paused only when the worker stays full a while (a
        # slow or hung smart host), and resumed when it is half empty (hysteresis).
        now = time.monotonic()
        if total >= cap:
            if self._full_since is None:
                self._full_since = now
        elif total <= cap // 2:
            self._full_since = None
        self._full["all"] = (
            self._full_since is not None and now - self._full_since >= PAUSE_WHEN_FULL_SECONDS
        )
        if retry >= retry_cap:
            self._full["retry"] = True
        elif retry <= retry_cap // 2:
            self._full["retry"] = False
        want = set(self._held)
        if self._full["all"]:
            want |= self._assigned
        elif self._full["retry"]:
            want |= {tp for tp in self._assigned if self._source.get(tp[0]) == "retry"}
        self._set_paused(want & self._assigned)

    def _set_paused(self, want: set[TP]) -> None:
        consumer = self._consumer
        assert consumer is not None
        to_pause = want - self._paused
        to_resume = self._paused - want
        try:
            if to_pause:
                consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            if to_resume:
                consumer.resume([TopicPartition(t, p) for t, p in to_resume])
        except KafkaException as exc:
            log.warning("delivery: pause/resume: %s", exc)
            return
        self._paused = set(want)

    # -- rebalances --------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            tp = (p.topic, p.partition)
            self._assigned.add(tp)
            self._states[tp] = PartitionState()
            # librdkafka keeps a partition's pause flag across a revoke and re-assign: count it
            # as paused so the next reconciliation resumes it explicitly
            self._paused.add(tp)
            self._held.pop(tp, None)
            self._held_offset.pop(tp, None)
            self._released.pop(tp, None)
        log.info("delivery: assigned %s", _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        states = [self._states[tp] for tp in tps if tp in self._states]
        # let in-flight records of these partitions become final, so the next owner starts
        # after them instead of sending them again
        self._wait_for(lambda: all(s.inflight == 0 for s in states), self._drain_seconds())
        self._commit(tps)
        self._forget(tps)
        log.info("delivery: revoked %s", _fmt(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(p.topic, p.partition) for p in partitions})
        log.warning("delivery: lost %s (their records may be sent again)", _fmt(partitions))

    def _forget(self, tps: set[TP]) -> None:
        for tp in tps:
            self._assigned.discard(tp)
            self._states.pop(tp, None)
            self._paused.discard(tp)
            self._held.pop(tp, None)
            self._held_offset.pop(tp, None)
            self._released.pop(tp, None)

    def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self._fatal is not None:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    # -- commits -----------------------------------------------------------------------------

    def _commit(self, tps: set[TP]) -> None:
        consumer = self._consumer
        assert consumer is not None
        offsets: list[TopicPartition] = []
        with self._cond:
            for tp in tps:
                state = self._states.get(tp)
                pos = state.position() if state is not None else None
                if state is not None and pos is not None and pos != state.committed:
                    offsets.append(TopicPartition(tp[0], tp[1], pos))
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            metrics.COMMITS.labels("error").inc()
            log.warning("delivery: commit failed (retried): %s", exc)
            return
        metrics.COMMITS.labels("ok").inc()
        with self._cond:
            for o in offsets:
                state = self._states.get((o.topic, o.partition))
                if state is not None:
                    state.committed = o.offset

    def _update_waiting_gauge(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        waiting = dict.fromkeys(range(len(self.retry_topics)), 0)
        tier_of = {t: i for i, t in enumerate(self.retry_topics)}
        tps = [tp for tp in self._assigned if tp[0] in tier_of]
        try:
            positions = consumer.position([TopicPartition(t, p) for t, p in tps]) if tps else []
            for tpo in positions:
                state = self._states.get((tpo.topic, tpo.partition))
                pos = state.position() if state is not None else None
                pos = pos if pos is not None else tpo.offset
                if pos is None or pos < 0:
                    continue
                _, high = consumer.get_watermark_offsets(tpo, timeout=1.0, cached=False)
                waiting[tier_of[tpo.topic]] += max(0, high - pos)
        except KafkaException as exc:
            log.debug("delivery: retry backlog: %s", exc)
            return
        for tier, n in waiting.items():
            metrics.RETRY_WAITING.labels(str(tier)).set(n)

    # -- one record (SMTP threads) -----------------------------------------------------------

    def _run_job(self, job: Job, copy: dict[str, Any] | None, error: str | None) -> None:
        where = f"{job.topic}[{job.partition}]@{job.offset}"
        try:
            if error is not None or copy is None:  # poison: kept as it came, for a person
                reason, klass = error or "undecodable", "invalid_copy" if copy else "undecodable"
                log.warning("%s: dead-lettering %s: %s", self.mode, where, reason)
                productions = [self._dead_letter(job, copy, reason, klass, value=job.value)]
            else:
                try:
                    productions = self._process(job, copy)
                except Exception as exc:
                    # a record this code cannot handle must not stop the stage in a crash loop:
                    # it is kept, unchanged, on the dead-letter topic for a person to look at
                    log.exception("delivery: processing %s", where)
                    productions = [
                        self._dead_letter(
                            job,
                            copy,
                            f"processing error: {exc!r}",
                            "processing_error",
                            value=job.value,
                        )
                    ]
            self._produce(job, productions)
        except Exception as exc:  # cannot even record the failure: never commit past it
            log.exception("delivery: recording the result of %s", where)
            self._fail(f"recording the result of {where}: {exc!r}")

    def _process(self, job: Job, copy: dict[str, Any]) -> list[Production]:
        if self.mode == "relay":
            copies = relay_copies(copy, self.config) if job.source == "journal" else [copy]
            return [p for c in copies for p in self._relay_attempt(job, c)]
        kind = str(copy.get("kind") or "JOURNAL")
        message = build_message(copy, self.config)
        assert isinstance(self.smtp, SmtpClient)
        result = self.smtp.send(envelope_sender(copy), str(copy["journal_address"]), message)
        now = now_millis()
        decision = decide(copy, result, now, self.cfg, self._rng)
        metrics.ATTEMPTS.labels(kind.lower(), result.result_class.value).inc()
        self._count("attempts")
        if decision.action is Action.DELIVERED:
            fault_point("delivery.after_remote_250")
            received = to_millis(copy.get("received_at"))
            if received:
                metrics.END_TO_END_SECONDS.labels(kind.lower()).observe(
                    max(0, now - received) / 1000
                )
            self._count("delivered")
            return [
                self._outcome(
                    copy,
                    OutcomeFields(
                        "DELIVERED",
                        decision.attempts,
                        decision.reply,
                        now,
                        delivered_to_host=result.host,
                    ),
                )
            ]
        if decision.action is Action.RETRY:
            assert decision.tier is not None
            self._count("retried")
            metrics.RETRIES_SCHEDULED.labels(str(decision.tier)).inc()
            requeued = retry_copy(copy, decision)
            return [
                Production(
                    self._tier_topic(decision.tier),
                    str(copy["copy_id"]),
                    encode(JOURNAL_COPY, requeued),
                    f"retry tier {decision.tier}",
                ),
                self._outcome(
                    copy,
                    OutcomeFields(
                        "RETRYING",
                        decision.attempts,
                        decision.reply,
                        now,
                        next_attempt_ms=decision.not_before_ms,
                    ),
                ),
            ]
        return self._failed(job, copy, message, result, decision, now)

    def _failed(
        self,
        job: Job,
        copy: dict[str, Any],
        message: bytes,
        result: SmtpResult,
        decision: Decision,
        now: int,
    ) -> list[Production]:
        """Permanent failure or expiry: an NDR for a journal copy, a dead letter for an NDR."""
        address = str(copy["journal_address"])
        how = "expired" if decision.expired else "failed permanently"
        if copy.get("kind") == "NDR":
            reason = f"NDR to {address} {how} after {decision.attempts} attempts: {decision.reply}"
            return self._give_up(
                job,
                copy,
                decision,
                now,
                reason,
                "ndr_expired" if decision.expired else "ndr_failed",
            )
        if not copy.get("ndr_address"):
            reason = f"journal copy to {address} {how} and has no NDR address: {decision.reply}"
            return self._give_up(job, copy, decision, now, reason, "no_ndr_address")
        failure = Failure(
            reply=decision.reply,
            remote=result.from_server,
            expired=decision.expired,
            attempts=decision.attempts,
            last_attempt_ms=now,
            remote_mta=result.host.rsplit(":", 1)[0] if result.from_server else None,
        )
        ndr = make_ndr_copy(
            copy,
            build_ndr(copy, message, failure, self.config, now_ms=now),
            self.config,
            now_ms=now,
        )
        for direction in copy.get("directions") or ["UNKNOWN"]:
            metrics.NDRS.labels(
                str(direction).lower(), "expired" if decision.expired else "permanent"
            ).inc()
        self._count("ndrs")
        log.info(
            "delivery: copy %s to %s %s (%s); NDR %s to %s",
            copy["copy_id"],
            address,
            how,
            decision.reply,
            ndr["copy_id"],
            ndr["journal_address"],
        )
        # the NDR's first attempt is made now; from then on it is a copy like any other
        productions = self._process(job, ndr)
        productions.append(
            self._outcome(
                copy,
                OutcomeFields(
                    "NDR_SENT",
                    decision.attempts,
                    decision.reply,
                    now,
                    ndr_copy_id=str(ndr["copy_id"]),
                ),
            )
        )
        return productions

    def _tier_topic(self, tier: int) -> str:
        return self.retry_topics[tier] if self.mode == "relay" else tier_topic(self.config, tier)

    # -- the relay (mode "relay") ------------------------------------------------------------

    def _relay_attempt(self, job: Job, copy: dict[str, Any]) -> list[Production]:
        """One attempt of a RELAY copy: per recipient delivered, retried or given up; a DSN to
        the sender for those given up who asked for one (attempted at once, like an NDR)."""
        assert isinstance(self.smtp, RelaySender)
        env = copy["relay"]
        rcpts = env["recipients"]
        results = self.smtp.send(copy)
        fault_point("relay.between_recipients")
        now = now_millis()
        is_dsn = copy.get("about_copy_id") is not None
        delivered: list[dict[str, Any]] = []
        retry: list[tuple[dict[str, Any], Decision]] = []
        failed: list[RecipientFailure] = []
        for rcpt, result in zip(rcpts, results, strict=True):
            decision = decide(copy, result, now, self.cfg, self._rng)
            metrics.ATTEMPTS.labels("relay", result.result_class.value).inc()
            if decision.action is Action.DELIVERED:
                delivered.append(rcpt)
            elif decision.action is Action.RETRY:
                retry.append((rcpt, decision))
            else:
                failure = Failure(
                    reply=decision.reply,
                    remote=result.from_server,
                    expired=decision.expired,
                    attempts=decision.attempts,
                    last_attempt_ms=now,
                    remote_mta=result.host.rsplit(":", 1)[0] if result.from_server else None,
                )
                failed.append(RecipientFailure(rcpt, failure))
        self._count("attempts")
        attempts = int(copy.get("attempt") or 0) + 1
        out: list[Production] = []
        if delivered:
            self._count("delivered")
            received = to_millis(copy.get("received_at"))
            if received and not is_dsn:
                metrics.RELAY_LATENCY.observe(max(0, now - received) / 1000)
        requeued: dict[str, Any] | None = None
        if retry:
            self._count("retried")
            first = retry[0][1]
            assert first.tier is not None
            metrics.RETRIES_SCHEDULED.labels(str(first.tier)).inc()
            requeued = retry_copy(with_recipients(copy, [r for r, _ in retry]), first)
            out += self._relay_delay_dsn(job, copy, requeued, retry, results, now)
            out.append(
                Production(
                    self._tier_topic(first.tier),
                    str(copy["copy_id"]),
                    encode(JOURNAL_COPY, requeued),
                    f"relay retry tier {first.tier}",
                )
            )
        status = "DELIVERED" if delivered else "RETRYING"
        reply = next((r.reply for r in results if r.reply), "")
        if failed:
            given_up = with_recipients(copy, [f.recipient for f in failed])
            wanted = dsn_recipients(copy, failed, "failed")
            if wanted:
                dsn = make_dsn_copy(given_up, wanted, "failed", self.config, now_ms=now)
                metrics.RELAY_DSNS.labels("failed").inc()
                self._count("ndrs")
                log.info(
                    "relay: %s: DSN %s to the sender for %d recipients",
                    copy["copy_id"],
                    dsn["copy_id"],
                    len(wanted),
                )
                out += self._relay_attempt(job, dsn)
                status = "NDR_SENT"
            if len(wanted) < len(failed):
                # a null sender, a DSN that failed, or NOTIFY without FAILURE: nobody to tell,
                # so the original is kept for a person rather than dropped
                why = (
                    "dsn_failed"
                    if is_dsn
                    else "null_sender"
                    if not copy.get("original_sender")
                    else "notify_never"
                )
                reason = f"relay of {copy['copy_id']} failed ({why}): {failed[0].failure.reply}"
                log.warning("relay: dead-lettering: %s", reason)
                final = dict(given_up, attempt=attempts, last_reply=failed[0].failure.reply)
                out.append(
                    self._dead_letter(
                        job, final, reason, f"relay_{why}", source_topic=self.retry_topics[0]
                    )
                )
                status = "NDR_SENT" if wanted else "DEAD_LETTERED"
        if retry:
            status = "RETRYING"
        metrics.RELAY_MESSAGES.labels(
            ("dsn_" if is_dsn else "")
            + ("partial" if delivered and (retry or failed) else status.lower())
        ).inc()
        out.append(
            self._outcome(
                copy,
                OutcomeFields(
                    status,
                    attempts,
                    reply,
                    now,
                    next_attempt_ms=requeued["not_before"] if requeued else None,
                    delivered_to_host=results[0].host if delivered else None,
                ),
            )
        )
        return out

    def _relay_delay_dsn(
        self,
        job: Job,
        copy: dict[str, Any],
        requeued: dict[str, Any],
        retry: list[tuple[dict[str, Any], Decision]],
        results: list[SmtpResult],
        now: int,
    ) -> list[Production]:
        """At most one delay DSN per copy, once it has waited ``delay_dsn_after_seconds``."""
        relay = self.config.relay
        if not relay.delay_dsn or copy["relay"].get("delay_notified"):
            return []
        if now - to_millis(copy.get("received_at")) < relay.delay_dsn_after_seconds * 1000:
            return []
        first = retry[0][1]
        failures = [
            RecipientFailure(
                r,
                Failure(
                    reply=d.reply,
                    remote=True,
                    expired=False,
                    attempts=d.attempts,
                    last_attempt_ms=now,
                ),
            )
            for r, d in retry
        ]
        wanted = dsn_recipients(copy, failures, "delayed")
        requeued["relay"] = {**requeued["relay"], "delay_notified": True}
        if not wanted:
            return []
        until = first.first_attempt_ms + round(self.cfg.expiry_seconds * 1000)
        dsn = make_dsn_copy(copy, wanted, "delayed", self.config, now_ms=now, until_ms=until)
        metrics.RELAY_DSNS.labels("delayed").inc()
        return self._relay_attempt(job, dsn)

    def _give_up(
        self,
        job: Job,
        copy: dict[str, Any],
        decision: Decision,
        now: int,
        reason: str,
        reason_class: str,
    ) -> list[Production]:
        log.warning("delivery: dead-lettering %s: %s", copy["copy_id"], reason)
        final = dict(copy)
        final.update(
            attempt=decision.attempts,
            last_reply=decision.reply,
            first_attempt_at=decision.first_attempt_ms,
        )
        return [
            self._dead_letter(job, final, reason, reason_class),
            self._outcome(
                copy, OutcomeFields("DEAD_LETTERED", decision.attempts, decision.reply, now)
            ),
        ]

    def _dead_letter(
        self,
        job: Job,
        copy: dict[str, Any] | None,
        reason: str,
        reason_class: str,
        *,
        value: bytes | None = None,
        source_topic: str | None = None,
    ) -> Production:
        """A DeadLetter wrapping ``copy`` as it stands (``value``: the raw record instead)."""
        metrics.DEAD_LETTERS.labels(reason_class).inc()
        self._count("dead_letters")
        record = {
            "id": new_event_id(),
            "at": now_millis(),
            "reason": reason,
            "source_topic": source_topic or job.topic,
            "partition": job.partition,
            "offset": job.offset,
            "key": job.key,
            "value": value if value is not None else _value_of(job, copy),
            "headers": job.headers,
            "copy_id": copy.get("copy_id") if copy is not None else None,
            "event_id": copy.get("event_id") if copy is not None else None,
        }
        key = str(record["copy_id"] or record["id"])
        return Production(self.dead_letter_topic, key, encode(DEAD_LETTER, record), "dead letter")

    def _outcome(self, copy: dict[str, Any], fields: OutcomeFields) -> Production:
        record = make_outcome(copy, fields)
        metrics.OUTCOMES.labels(str(record["kind"]).lower(), fields.status.lower()).inc()
        with self._cond:
            self.stats.by_status[fields.status] = self.stats.by_status.get(fields.status, 0) + 1
        return Production(
            self.outcomes_topic,
            str(copy["copy_id"]),
            encode(DELIVERY_OUTCOME, record),
            f"outcome {fields.status}",
        )

    def _count(self, name: str) -> None:
        with self._cond:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    # -- producing ---------------------------------------------------------------------------

    def _produce(self, job: Job, productions: list[Production]) -> None:
        producer = self._producer
        assert producer is not None
        job.acks_pending = len(productions)
        if not productions:
            self._finish(job)
            return
        for p in productions:
            callback = self._ack_callback(job, p)
            while True:
                try:
                    producer.produce(
                        p.topic, value=p.value, key=p.key.encode(), on_delivery=callback
                    )
                    break
                except BufferError:  # the local queue is full: wait for acknowledgements
                    producer.poll(0.05)

    def _ack_callback(
        self, job: Job, production: Production
    ) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                # the record stays in flight forever: no commit passes it; stop and let the
                # restarted worker process it again
                self._fail(f"producing {production.what} to {production.topic}: {err}")
                return
            with self._cond:
                job.acks_pending -= 1
                done = job.acks_pending == 0
            if done:
                self._finish(job)

        return on_delivery

    def _finish(self, job: Job) -> None:
        with self._cond:
            job.state.finish(job.offset)
            self._inflight[job.source] -= 1
            self.stats.finished += 1
            self._cond.notify_all()
        metrics.INFLIGHT.labels(job.source).dec()

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._fatal is None:
                self._fatal = reason
            self._cond.notify_all()
        self._stop.set()


def _headers(msg: Message) -> dict[str, bytes]:
    """Kafka record headers as DeadLetter keeps them (last value wins, null as empty)."""
    out: dict[str, bytes] = {}
    for header in msg.headers() or []:
        key, value = header[0], header[1]
        out[key] = value.encode() if isinstance(value, str) else (value or b"")
    return out


def _value_of(job: Job, copy: dict[str, Any] | None) -> bytes:
    return encode(JOURNAL_COPY, copy) if copy is not None else job.value


def _fmt(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
