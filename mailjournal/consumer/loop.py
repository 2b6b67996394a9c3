"""The tiered consumer: a stage's input topic and retry tiers in, a handler's productions out,
offsets committed once what followed from a record is durable.

Threads:

- the **main thread** owns the Kafka consumer: it fetches records, has the handler admit them,
  hands the work to the pool, pauses and resumes partitions, and commits offsets;
- **worker threads** (``Settings.concurrency``, :mod:`mailjournal.consumer.workers`; the stages
  keep one reused SMTP session each) run :meth:`Handler.process` and produce what it returns;
- a **producer thread** serves the producer's delivery reports.

Crash safety (at-least-once, never a lost record): a record's offset becomes committable only
once every record it gave rise to -- the outcome, the retry record, the NDR, the dead letter --
has been acknowledged by Kafka (``acks=all``, idempotent producer). Commits cover, per
partition, the records below the lowest one not yet final, and the commit's progress note
(:mod:`mailjournal.consumer.partition`) the final ones past it, which the partition's next owner
skips; so a crash anywhere repeats at most the records in flight and those finished since the
last commit: a duplicate send (same Message-ID) or a duplicate retry record, never a gap.

Head of line: ``max_inflight`` bounds that work (in flight + finished since the last commit), not
the span behind the oldest record in flight, so a copy stuck at a partition's head (an archive
hanging until the command timeout) does not stop the copies behind it to other destinations.
The span kept in memory (one offset per record) is bounded by :data:`MAX_SPAN_RECORDS`.

Memory: ``max_inflight_bytes`` bounds the bytes of the records taken and not yet finished (each
is held, raw and decoded, until it is): with 1 MB copies 256 records were a gigabyte. A fetch
takes only as many records as the last one's size says still fit, and one record when nothing is
held, so the budget is kept to within one record, and a record larger than the budget still goes.
Below the loop, librdkafka's prefetch queue is bounded to a quarter of the budget.

Retry tiers: a partition whose head record is not yet due is paused and rewound to that record
(it is re-fetched when due); the record is not kept in memory, and nothing polls in a loop. The
input topic and the retry tiers are fetched by the same consumer, but each partition pauses on
its own, and retried records may occupy at most half of ``max_inflight``: fresh traffic always
has room. A head waits at most its tier's longest delay (delay + jitter), whatever its due time
says, and only once: a record claiming to be due in ten years cannot hold the partition behind
it.

Poison records: what the handler's :meth:`~Handler.admit` calls poison is dead-lettered with the
reason and its topic, partition and offset, and the partition moves on; so is a record whose
processing raised.
"""

from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from mailjournal.config import Config
from mailjournal.consumer import metrics
from mailjournal.consumer.dead_letter import dead_letter
from mailjournal.consumer.fetch import fetch
from mailjournal.consumer.handler import Handler, Poison, Production, Record, Source
from mailjournal.consumer.lag import partition_lag
from mailjournal.consumer.partition import PartitionState, parse_note
from mailjournal.consumer.workers import Workers
from mailjournal.kafka import close_consumer, flush_producer, make_consumer, make_producer
from mailjournal.metrics import children
from schemas import from_millis, now_millis

log = logging.getLogger(__name__)
_INFLIGHT = children(metrics.INFLIGHT)

TP = tuple[str, int]

COMMIT_INTERVAL_SECONDS = 0.5
PRODUCE_AGAIN_LOG_SECONDS = 30.0  # one warning per this long while Kafka is away
POLL_SECONDS = 0.1
PAUSE_WHEN_FULL_SECONDS = 1.0  # full this long: pause the partitions too (_apply_backpressure)
WAITING_GAUGE_INTERVAL_SECONDS = 5.0
MAX_BATCH = 500
# offsets kept behind the oldest record in flight, over all partitions (a few MB): at 1,000
# records/s a head may be stuck 100 s before the stage holds off
MAX_SPAN_RECORDS = 100_000
# librdkafka's prefetch queue is a quarter of max_inflight_bytes (16 MiB of the default 64):
# with 1 MB copies its 64 MiB default was a fifth of delivery's RSS and bought no rate
# (docs/performance.md, "The prefetch queue")
PREFETCH_PER_BUDGET = 4
COMMITTED_TIMEOUT_SECONDS = 10.0


@dataclass
class _Job:
    """One consumed record on its way to being final."""

    state: PartitionState
    record: Record
    acks_pending: int = 0


@dataclass
class Stats:
    """Counters for tests and benchmarks (Prometheus has the real ones)."""

    finished: int = 0  # records whose results Kafka acknowledged (final or handed to a retry)
    dead_letters: int = 0
    full: bool = False  # full (max_inflight or max_inflight_bytes) long enough to pause


class TieredConsumer:
    """Runs ``handler`` on its input topic and retry tiers until :meth:`stop`."""

    def __init__(self, config: Config, handler: Handler):
        self.config = config
        self.handler = handler
        self.name = handler.name
        settings = self.settings = handler.settings
        self.dead_letter_topic = config.kafka.topics.dead_letters.name
        self.retry_topics = settings.tiers.topics
        self._source = {
            settings.topic: Source.INPUT,
            **dict.fromkeys(self.retry_topics, Source.RETRY),
        }
        self._max_wait_ms = settings.tiers.longest_wait_ms()

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._states: dict[TP, PartitionState] = {}
        self._inflight = dict.fromkeys(Source, 0)
        self._bytes = 0  # of the records taken and not finished (max_inflight_bytes)
        self._record_bytes = 1  # the size of the last record taken: what a fetch may bring
        self._assigned: set[TP] = set()
        self._paused: set[TP] = set()
        self._held: dict[TP, int] = {}  # retry partition -> due time (ms) of its head
        self._held_offset: dict[TP, int] = {}  # retry partition -> offset of its held head
        self._released: dict[TP, int] = {}  # the head whose wait is over: taken when fetched
        self._due: list[tuple[int, TP]] = []
        self._full = {"all": False, "retry": False}
        self._full_since: float | None = None  # when max_inflight was reached (None: not full)
        self._running = False
        self.stats = Stats()
        self.gauge_interval_seconds = WAITING_GAUGE_INTERVAL_SECONDS

        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._executor: Workers | None = None
        self._poller: threading.Thread | None = None
        self._poller_stop = threading.Event()
        # productions whose delivery report was a retriable failure (Kafka away past
        # delivery.timeout.ms), produced again by the producer thread
        self._again: list[tuple[_Job, Production]] = []
        self._again_logged = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._running and self._fatal is None

    def stop(self) -> None:
        """Graceful stop (SIGTERM): stop fetching, finish in-flight work, commit, return."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> int:
        """Run until :meth:`stop`; 0 after a graceful stop, 1 after a fatal Kafka error."""
        self._producer = make_producer(self.config, role=self.name)
        self._consumer = make_consumer(
            self.config,
            self.settings.group,
            role=self.name,
            prefetch_bytes=self.settings.max_inflight_bytes // PREFETCH_PER_BUDGET,
        )
        self._executor = Workers(self.settings.concurrency, "smtp")
        self._poller = threading.Thread(target=self._poll_producer, name="producer", daemon=True)
        self._poller.start()
        self._consumer.subscribe(
            [self.settings.topic, *self.retry_topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._running = True
        log.info(
            "%s: consuming %s and %d retry tiers, smart host %s, %d sessions",
            self.name,
            self.settings.topic,
            len(self.retry_topics),
            self.handler.destination,
            self.settings.concurrency,
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
            log.error("%s: stopped on a fatal error: %s", self.name, self._fatal)
            return 1
        return 0

    def _shutdown(self) -> None:
        self._running = False
        consumer = self._consumer
        assert consumer is not None and self._executor is not None and self._producer is not None
        if self._fatal is None:
            # stop fetching; let in-flight work finish and its results reach Kafka
            self._set_paused(set(self._assigned))
            self._wait_for(lambda: self._total_inflight() == 0, self.settings.drain_seconds)
        self._commit(self._assigned)
        close_consumer(self.name, consumer)  # on_revoke commits again (a no-op by now)
        self._executor.shutdown(wait=self._fatal is None, cancel=True)
        self._poller_stop.set()
        if self._poller is not None:
            self._poller.join()
        flush_producer(self.name, self._producer, 30)
        self._producer = self._consumer = None  # librdkafka handles go now, not at GC
        self.handler.close()

    def _poll_producer(self) -> None:
        assert self._producer is not None
        while not self._poller_stop.is_set():
            self._producer.poll(0.1)
            self._produce_again()

    # -- the main loop -----------------------------------------------------------------------

    def _iteration(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._resume_due()
        self._apply_backpressure()
        # the window bounds the records a crash would hand over again: in flight, and finished
        # but not yet committed; commit as soon as half of it is finished work, not only at the
        # interval, so a fast smart host is not held back by the commit cadence
        max_inflight = self.settings.max_inflight
        unrecorded, working = self._window()
        if unrecorded - working >= max_inflight // 2:
            self._commit(self._assigned)
            unrecorded, working = self._window()
        room = min(max_inflight - unrecorded, MAX_SPAN_RECORDS - self._span(), self._byte_room())
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
            messages = fetch(consumer, min(room, MAX_BATCH), timeout)
        except KafkaException as exc:
            self._fail(f"consuming: {exc}")
            return
        for msg in messages:
            self._on_message(msg)

    def _byte_room(self) -> int:
        """How many more records of the last one's size fit in max_inflight_bytes; one when
        nothing is in flight, however large (a record bigger than the budget still goes)."""
        with self._cond:
            held = self._bytes
        if held == 0:  # one first: its size says how many of the next batch fit
            return 1
        return (self.settings.max_inflight_bytes - held) // self._record_bytes

    def _poll_timeout(self) -> float:
        if self._due:
            wait = (self._due[0][0] - now_millis()) / 1000
            return max(0.0, min(POLL_SECONDS, wait))
        return POLL_SECONDS

    def _total_inflight(self) -> int:
        return sum(self._inflight.values())

    def _window(self) -> tuple[int, int]:
        """(records a crash would hand over again, records in flight) of the assignment."""
        with self._cond:
            states = [s for tp, s in self._states.items() if tp in self._assigned]
            return sum(s.unrecorded for s in states), sum(s.working for s in states)

    def _span(self) -> int:
        with self._cond:
            return sum(s.uncommitted for tp, s in self._states.items() if tp in self._assigned)

    def _restore(self) -> None:
        """Read the committed progress notes of the partitions assigned since the last call: the
        records they say are final are skipped, not handled again."""
        consumer = self._consumer
        assert consumer is not None
        fresh = [tp for tp in self._assigned if not self._states[tp].restored]
        if not fresh:
            return
        for tp in fresh:
            self._states[tp].restored = True
        try:
            committed = consumer.committed(
                [TopicPartition(t, p) for t, p in fresh], timeout=COMMITTED_TIMEOUT_SECONDS
            )
        except KafkaException as exc:  # nothing skipped: handled again, never lost
            log.warning("%s: reading committed progress notes: %s", self.name, exc)
            return
        for c in committed:
            state = self._states.get((c.topic, c.partition))
            if state is None or c.error is not None or c.offset < 0:
                continue
            state.recorded = parse_note(c.metadata, c.offset)
            if state.recorded is not None:
                log.info(
                    "%s: %s[%d] resumes at %d; final records after it up to %d are skipped",
                    self.name,
                    c.topic,
                    c.partition,
                    c.offset,
                    state.recorded.end,
                )

    def _on_message(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                self._fail(f"consumer: {err}")
            else:
                log.warning("%s: consumer: %s", self.name, err)
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        tp = (topic, partition)
        if tp not in self._assigned:
            return  # fetched before a revocation: the partition's new owner reads it
        if tp in self._held:
            return  # behind a retry head that is not due: fetched again after it
        state = self._states.setdefault(tp, PartitionState())
        if not state.restored:
            self._restore()
        if state.finished_before(offset):
            with self._cond:
                state.skip(offset)
            metrics.SKIPPED_FINAL.inc()
            return
        source = self._source.get(topic, Source.INPUT)
        record = Record(
            source, topic, partition, offset, msg.key(), msg.value() or b"", _headers(msg)
        )
        now = now_millis()
        admission = self.handler.admit(record, now)
        if admission is None:
            with self._cond:
                state.skip(offset)
            return
        if isinstance(admission, Poison):
            self._submit(_Job(state, record), admission)
            return
        if source is Source.RETRY:
            released = self._released.pop(tp, None) == offset
            due = admission.due_ms
            if due > now and not released:
                longest = now + self._max_wait_ms[topic]
                if due > longest:
                    log.warning(
                        "%s: %s: not_before %s is beyond the tier's longest delay; it waits %.1f s",
                        self.name,
                        record.where,
                        from_millis(due),
                        (longest - now) / 1000,
                    )
                self._hold(tp, offset, min(due, longest))
                return
        self._submit(_Job(state, record), admission.value)

    def _submit(self, job: _Job, work: dict[str, Any] | Poison) -> None:
        assert self._executor is not None
        source = job.record.source
        size = len(job.record.value)
        with self._cond:
            job.state.add(job.record.offset)
            self._inflight[source] += 1
            self._bytes += size
        self._record_bytes = max(1, size)
        metrics.INFLIGHT_BYTES.inc(size)
        _INFLIGHT(source.value).inc()
        self._executor.submit(functools.partial(self._run_job, job, work))

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
        retry = self._inflight[Source.RETRY]
        cap = self.settings.max_inflight
        # the span and the bytes count at the same scale: full when either is (for the bytes:
        # when one more record of the last one's size would not fit), half empty when all are
        with self._cond:
            held = self._bytes
        if held:
            held += self._record_bytes
        total = max(
            self._window()[0],
            self._span() * cap // MAX_SPAN_RECORDS,
            held * cap // self.settings.max_inflight_bytes,
        )
        retry_cap = max(1, cap // 2)
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
        self._full["all"] = self.stats.full = (
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
            want |= {tp for tp in self._assigned if self._source.get(tp[0]) is Source.RETRY}
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
            log.warning("%s: pause/resume: %s", self.name, exc)
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
        log.info("%s: assigned %s", self.name, _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        states = [self._states[tp] for tp in tps if tp in self._states]
        # let in-flight records of these partitions become final, so the next owner starts
        # after them instead of handling them again
        self._wait_for(lambda: all(s.inflight == 0 for s in states), self.settings.drain_seconds)
        self._commit(tps)
        self._forget(tps)
        log.info("%s: revoked %s", self.name, _fmt(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(p.topic, p.partition) for p in partitions})
        log.warning("%s: lost %s (their records may be sent again)", self.name, _fmt(partitions))

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
        finished: dict[TP, int] = {}
        with self._cond:
            for tp in tps:
                state = self._states.get(tp)
                pos = state.position() if state is not None else None
                if state is None or pos is None:
                    continue
                if pos != state.committed or state.finished != state.recorded_finished:
                    offsets.append(TopicPartition(tp[0], tp[1], pos, metadata=state.note() or ""))
                    finished[tp] = state.finished
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            metrics.COMMITS.labels("error").inc()
            log.warning("%s: commit failed (retried): %s", self.name, exc)
            return
        metrics.COMMITS.labels("ok").inc()
        with self._cond:
            for o in offsets:
                state = self._states.get((o.topic, o.partition))
                if state is not None:
                    state.committed = o.offset
                    state.recorded_finished = finished[(o.topic, o.partition)]

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
                lag = partition_lag(
                    consumer, TopicPartition(tpo.topic, tpo.partition, pos), cached=False
                )
                if lag is not None:
                    waiting[tier_of[tpo.topic]] += lag
        except KafkaException as exc:
            log.debug("%s: retry backlog: %s", self.name, exc)
            return
        for tier, n in waiting.items():
            metrics.RETRY_WAITING.labels(str(tier)).set(n)

    # -- one record (worker threads) ---------------------------------------------------------

    def _run_job(self, job: _Job, work: dict[str, Any] | Poison) -> None:
        record = job.record
        try:
            if isinstance(work, Poison):  # kept as it came, for a person
                log.warning("%s: dead-lettering %s: %s", self.name, record.where, work.reason)
                productions = [
                    self._dead_letter(record, work.reason, work.reason_class, work.value)
                ]
            else:
                try:
                    productions = self.handler.process(record, work)
                except Exception as exc:
                    # a record this code cannot handle must not stop the stage in a crash loop:
                    # it is kept, unchanged, on the dead-letter topic for a person to look at
                    log.exception("%s: processing %s", self.name, record.where)
                    productions = [
                        self._dead_letter(
                            record, f"processing error: {exc!r}", "processing_error", work
                        )
                    ]
            self._produce(job, productions)
        except Exception as exc:  # cannot even record the failure: never commit past it
            log.exception("%s: recording the result of %s", self.name, record.where)
            self._fail(f"recording the result of {record.where}: {exc!r}")

    def _dead_letter(
        self, record: Record, reason: str, reason_class: str, about: dict[str, Any] | None
    ) -> Production:
        return dead_letter(
            self.dead_letter_topic, record, reason, reason_class, value=record.value, about=about
        )

    # -- producing ---------------------------------------------------------------------------

    def _produce(self, job: _Job, productions: list[Production]) -> None:
        producer = self._producer
        assert producer is not None
        letters = sum(p.topic == self.dead_letter_topic for p in productions)
        with self._cond:
            self.stats.dead_letters += letters
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
        self, job: _Job, production: Production
    ) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                if _retriable(err) and not self._stop.is_set():
                    # Kafka has been away longer than delivery.timeout.ms: the record is still
                    # owed, and the stage stays up (an outage of any length is no crash) --
                    # produce it again; its offset stays uncommitted meanwhile
                    self._note_again(production, err)
                    with self._cond:
                        self._again.append((job, production))
                    return
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

    def _note_again(self, production: Production, err: KafkaError) -> None:
        metrics.PRODUCED_AGAIN.inc()
        now = time.monotonic()
        if now - self._again_logged >= PRODUCE_AGAIN_LOG_SECONDS:
            self._again_logged = now
            log.warning(
                "%s: producing %s to %s failed: %s (producing it again; more such failures "
                "are counted in mailjournal_delivery_produced_again_total)",
                self.name,
                production.what,
                production.topic,
                err,
            )

    def _produce_again(self) -> None:
        """Produce what failed retriably once more (the producer thread, between polls)."""
        with self._cond:
            again, self._again = self._again, []
        producer = self._producer
        assert producer is not None
        for i, (job, p) in enumerate(again):
            try:
                producer.produce(
                    p.topic,
                    value=p.value,
                    key=p.key.encode(),
                    on_delivery=self._ack_callback(job, p),
                )
            except BufferError:  # the local queue is full: the rest after the next poll
                with self._cond:
                    self._again[:0] = again[i:]
                return
            except KafkaException as exc:
                self._fail(f"producing {p.what} to {p.topic} again: {exc.args[0]}")
                return

    def _finish(self, job: _Job) -> None:
        source = job.record.source
        with self._cond:
            job.state.finish(job.record.offset)
            self._inflight[source] -= 1
            self._bytes -= len(job.record.value)
            self.stats.finished += 1
            self._cond.notify_all()
        metrics.INFLIGHT_BYTES.dec(len(job.record.value))
        _INFLIGHT(source.value).dec()

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._fatal is None:
                self._fatal = reason
            self._cond.notify_all()
        self._stop.set()


# failures of a record's delivery that say nothing about the record: Kafka was away or slow
_AWAY = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def _retriable(err: KafkaError) -> bool:
    return not err.fatal() and (err.code() in _AWAY or err.retriable())


def _headers(msg: Message) -> dict[str, bytes]:
    """Kafka record headers as DeadLetter keeps them (last value wins, null as empty)."""
    out: dict[str, bytes] = {}
    for header in msg.headers() or []:
        key, value = header[0], header[1]
        out[key] = value.encode() if isinstance(value, str) else (value or b"")
    return out


def _fmt(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
