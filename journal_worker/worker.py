"""The exactly-once loop: consume message events, decide, produce journal copies, commit.

One Kafka transaction per batch (``journal.batch_max_messages`` / ``journal.batch_max_ms``)
holds the batch's journal copies, its dead letters and the consumed offsets
(``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447). Readers with
``isolation.level=read_committed`` therefore see each message's copies exactly once, whatever
crashes or rebalances happen in between.

Transactional id: ``<journal group>-<instance id>``. Give each replica a stable instance id
(``--instance-id``, ``MAILJOURNAL_INSTANCE_ID``; e.g. a StatefulSet pod name) and a restarted
replica fences its zombie and aborts its open transaction at once in ``init_transactions``.
Without one it is ``<host>-<pid>``: stable across container restarts in a pod (pid 1), unique
per process on a plain host; ``mailjournal run`` passes ``<host>-run<its pid>``, the same for
every restart of its worker. Correctness never depends on it: with the KIP-447 model the group
coordinator refuses offsets from a member of an old generation, and a new partition owner waits
for a pending transaction's offsets; a unique id only means a crashed process's open
transaction holds back read_committed readers until ``transaction.timeout.ms``.

Errors: a retriable ``KafkaException`` retries the call for as long as it stays retriable (a
Kafka outage is waited out in process: a restart cannot end it), one that requires abort aborts
the transaction and rewinds the consumer to the batch's first offsets (= the last committed
positions). A transactional call stuck past its timeout, or a producer that turned fatal because
the coordinator timed out a transaction held open by an outage, is replaced in process by a new
producer with the same transactional id, and the batch is rewound. Anything else is fatal --
among it a fence by a newer instance with our transactional id (a zombie must stop):
:class:`FatalError` -> exit non-zero, the supervisor restarts the worker.

Directory outage: the decided prefix of the batch is committed, the partitions are rewound to
the first undecided message and paused, and the lookup is retried with backoff while the
consumer keeps polling (so it stays in the group); nothing after the undecided message is
committed until it is decided.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from journal_worker import metrics
from journal_worker.deadline import DeadlineThread, Stuck
from journal_worker.decide import (
    Decider,
    Decision,
    Plan,
    PlannedCopy,
    fallback_decision,
    journal_copy_record,
)
from journal_worker.lookups import make_directory, resolve
from mailjournal.config import Config
from mailjournal.consumer.fetch import fetch
from mailjournal.consumer.lag import partition_lag
from mailjournal.consumer.stage import StageFatal
from mailjournal.directory import Directory, DirectoryUnavailable
from mailjournal.faults import fault_point
from mailjournal.kafka import close_clients, consumer_config, make_producer, producer_config
from mailjournal.policy import policy_digest
from schemas import (
    DEAD_LETTER,
    JOURNAL_COPY,
    MESSAGE_RECEIVED,
    SchemaError,
    default_codec,
)
from schemas.records import dead_letter

log = logging.getLogger(__name__)

T = TypeVar("T")
Record = tuple[str, str | bytes | None, bytes]  # topic, key, value

RETRY_DEADLINE_SECONDS = 120.0  # a produce() failing retriably this long is fatal
# librdkafka's transactional calls block forever without a timeout; with one, a call stuck after
# a broker outage times out (retriable) and is retried until the brokers are back
TXN_CALL_TIMEOUT_SECONDS = 30.0
# a producer made fatal by an outage-timed-out transaction is replaced at most this often
MAX_FATAL_REPLACEMENTS = 3
FATAL_REPLACEMENT_WINDOW_SECONDS = 600.0
LAG_INTERVAL_SECONDS = 2.0


class FatalError(StageFatal):
    """The worker cannot go on (fatal Kafka error, fenced); exit non-zero and be restarted."""


class _AbortRequired(Exception):
    pass


class _ProducerStuck(FatalError):
    """A transactional call did not return within its timeout: librdkafka can block past it
    when the group coordinator disappeared during an outage (librdkafka issues 5456, 5511)."""


class _ProducerFatal(FatalError):
    """The producer reported a fatal error (fenced, epoch bumped): it cannot be used again."""


class _Stopping(Exception):
    """Asked to stop while a transactional call was waiting for Kafka to come back."""


@dataclass
class _Item:
    msg: Message
    event: dict[str, Any] | None = None
    plan: Plan | None = None
    poison: str | None = None  # reason, for the dead-letter topic
    unplanned: str | None = None  # why planning raised: the event is decided by the fallback


def _position(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record (never None for one without error)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def _first_offsets(msgs: Sequence[Message]) -> dict[tuple[str, int], int]:
    """The lowest offset of ``msgs`` per (topic, partition)."""
    first: dict[tuple[str, int], int] = {}
    for m in msgs:
        topic, partition, offset = _position(m)
        first[(topic, partition)] = min(first.get((topic, partition), offset), offset)
    return first


def default_instance_id() -> str:
    return os.environ.get("MAILJOURNAL_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"


class JournalWorker:
    def __init__(
        self,
        config: Config,
        *,
        instance_id: str | None = None,
        directory: Directory | None = None,
    ):
        self.config = config
        self.instance_id = instance_id or default_instance_id()
        self.directory = directory if directory is not None else make_directory(config.directory)
        self.codec = default_codec()
        self.decider = Decider(config, config.journal.stamp_key())
        self.policy_digest = policy_digest(config)  # recorded in every copy (docs/evidence.md)
        topics = config.kafka.topics
        self.messages_topic = topics.messages.name
        self.journal_topic = topics.journal.name
        self.dead_letter_topic = topics.dead_letters.name
        self.transactional_id = f"{config.kafka.journal_group}-{self.instance_id}"
        self._producer_settings = producer_config(
            config, transactional_id=self.transactional_id, role="journal"
        )
        # a batch of 1 MB messages, not only a count of them, is bounded (RSS, issue 17)
        self._consumer_settings = consumer_config(
            config,
            config.kafka.journal_group,
            role="journal",
            prefetch_bytes=config.journal.prefetch_max_bytes,
        )
        self.batch_max = config.journal.batch_max_messages
        self.batch_timeout = config.journal.batch_max_ms / 1000
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._txn_started: float | None = None
        self._calls = DeadlineThread("txn")  # the transactional calls, each with a deadline
        self._txn_begun: float | None = None  # monotonic time of the open transaction's begin
        self._fatal_replacements: list[float] = []
        self._abandoned: list[Producer] = []
        self._in_transaction = False
        self._lag_at = 0.0
        self._lag_partitions: set[int] = set()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        return self._ready.is_set() and not self._stop.is_set()

    def run(self) -> None:
        """Run until :meth:`stop`; raises :class:`FatalError` when it must not go on."""
        self.producer = make_producer(
            self.config, transactional_id=self.transactional_id, role="journal"
        )
        self.consumer = Consumer(self._consumer_settings)
        failed = True  # until the loop ends by a stop
        try:
            self._txn_call("init_transactions", self.producer.init_transactions, 30)
            self.consumer.subscribe(
                [self.messages_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            log.info(
                "journal worker %s consuming %s (transactional.id %s)",
                self.instance_id,
                self.messages_topic,
                self.transactional_id,
            )
            self._ready.set()
            while not self._stop.is_set():
                try:
                    msgs = self._next_batch()
                except KafkaException as exc:  # raised by consume itself only when fatal
                    metrics.KAFKA_ERRORS.labels("fatal").inc()
                    raise FatalError(f"consume: {exc.args[0]}") from None
                batch = [m for m in msgs if self._usable(m)]
                if batch:
                    self._process(batch)
                self._update_lag()
            failed = False
        except _AbortRequired as exc:  # only from init_transactions: nothing open to abort
            raise FatalError(str(exc)) from None
        except _Stopping:
            failed = False
            log.info(
                "stopped while waiting for Kafka; the open transaction (if any) is aborted "
                "by the coordinator or by our successor"
            )
        finally:
            self._ready.clear()
            self._close(failed)

    def _next_batch(self) -> list[Message]:
        """What the consumer has buffered (up to ``batch_max``); when nothing is, wait up to
        ``batch_timeout`` for the first record and take it with whatever came along
        (:func:`~mailjournal.consumer.fetch.fetch`): at light load a message is not held for
        ``batch_max_ms``."""
        assert self.consumer is not None
        return fetch(self.consumer, self.batch_max, self.batch_timeout)

    def _close(self, failed: bool) -> None:
        # an open transaction here is one a fatal error interrupted: leave it to the broker's
        # timeout or to our successor's init_transactions, do not touch the dead producer
        self._in_transaction = False
        self._calls.close()
        close_clients("journal worker", self.consumer, self.producer, failed=failed)
        if self.directory is not None:
            self.directory.close()

    # -- rebalance ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # callbacks run inside consume()/poll(), never while a batch is in its transaction; if
        # that ever changed, abort first so no offsets of a revoked partition are committed
        if self._in_transaction and self.producer is not None:
            log.warning("partitions revoked during a transaction: aborting it")
            self._abort()
        for tp in partitions:
            if tp.partition in self._lag_partitions:
                self._lag_partitions.discard(tp.partition)
                metrics.CONSUMER_LAG.remove(str(tp.partition))
        log.info("revoked %s", sorted(tp.partition for tp in partitions))

    # -- one batch ----------------------------------------------------------------------------

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        metrics.KAFKA_ERRORS.labels("consumer").inc()
        if err.fatal():
            raise FatalError(f"consumer: {err}")
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer: %s", err)
        return False

    def _parse(self, msg: Message) -> _Item:
        item = _Item(msg)
        value = msg.value()
        if value is None:
            item.poison = "empty record (no value)"
            return item
        try:
            # the original as a view of the record: its copies splice it in (write_body)
            item.event = self.codec.decode(value, MESSAGE_RECEIVED, tail_view=True)
        except SchemaError as exc:
            item.poison = f"undecodable {MESSAGE_RECEIVED}: {exc}"
            return item
        try:
            item.plan = self.decider.plan(item.event)
        except Exception as exc:  # any type (recursion, encoding, a bug): the fallback decides
            log.exception("planning %s/%d@%d", msg.topic(), msg.partition(), msg.offset())
            item.unplanned = f"planning raised {exc!r}"
        return item

    def _answers(self, items: Sequence[_Item]) -> tuple[int, dict[Any, list[str]]]:
        """Directory answers for the longest decidable prefix of ``items``: (prefix length,
        answers). The whole batch is asked in one go; only on an outage item by item."""
        requests = [r for it in items if it.plan for r in it.plan.lookups]
        if not requests:
            return len(items), {}
        assert self.directory is not None, "per-recipient journaling needs a directory"
        try:
            return len(items), resolve(self.directory, requests)
        except DirectoryUnavailable as exc:
            log.warning("directory unavailable: %s", exc)
        answers: dict[Any, list[str]] = {}
        for n, it in enumerate(items):
            if not it.plan or not it.plan.lookups:
                continue
            try:
                answers.update(resolve(self.directory, it.plan.lookups))
            except DirectoryUnavailable:
                return n, answers
        return len(items), answers

    def _process(self, batch: list[Message]) -> None:
        items = [self._parse(msg) for msg in batch]
        probe: Callable[[], object] | None = None
        n, answers = self._answers(items)
        if n < len(items):
            assert self.directory is not None
            # the first undecided message's own lookups probe for the end of the outage
            plan = items[n].plan
            assert plan is not None
            probe = functools.partial(resolve, self.directory, plan.lookups)
            items = items[:n]

        if items:
            self._transact(items, answers)
        if probe is not None:
            self._rewind(batch[len(items) :])
            self._wait_out_outage(probe)

    def _records_for(
        self, item: _Item, answers: dict[Any, list[str]], tallies: _Tallies
    ) -> list[Record]:
        msg = item.msg
        if item.poison is None:
            # A readable MessageReceived always ends in a decision: the full one, or when that
            # raises (any type: a recursion in a header parser, an unencodable field, a bug)
            # the envelope-only fallback with the global copies of its directions.
            assert item.event is not None
            failed = item.unplanned
            if item.plan is not None:
                try:
                    decision = self.decider.decide(item.plan, answers)
                    out = [self._copy_record(item.event, c) for c in decision.copies]
                except Exception as exc:
                    log.exception("deciding %s/%d@%d", msg.topic(), msg.partition(), msg.offset())
                    failed = f"deciding raised {exc!r}"
            if failed is not None:
                try:
                    decision = fallback_decision(item.event, self.config, failed)
                    out = [self._copy_record(item.event, c, fallback=True) for c in decision.copies]
                except Exception as exc:  # the last resort; the audit reports it as a gap
                    log.exception(
                        "fallback for %s/%d@%d", msg.topic(), msg.partition(), msg.offset()
                    )
                    item.poison = f"unjournalable {MESSAGE_RECEIVED}: {failed}; fallback {exc!r}"
                else:
                    log.error(
                        "event %s at %s/%d@%d: decided by the envelope-only fallback (%s): %s",
                        decision.event_id,
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        failed,
                        ", ".join(c.journal_address for c in decision.copies) or "no copy",
                    )
            if item.poison is None:
                tallies.add(decision)
                self._log_decision(decision)
                return out
        tallies.dead_letters[_reason_class(item.poison)] += 1
        log.error(
            "dead-lettering %s/%d@%d: %s", msg.topic(), msg.partition(), msg.offset(), item.poison
        )
        event_id = str(item.event["event_id"]) if item.event else None
        headers: dict[str, bytes] = {}
        for h in msg.headers() or []:  # kept as delivery keeps them: null as empty
            headers[h[0]] = h[1].encode() if isinstance(h[1], str) else (h[1] or b"")
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None  # consumed
        dead = dead_letter(
            reason=item.poison,
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=msg.key(),
            value=msg.value() or b"",
            headers=headers,
            event_id=event_id,
        )
        key = msg.key() or event_id or f"{msg.topic()}/{msg.partition()}@{msg.offset()}"
        return [(self.dead_letter_topic, key, self.codec.encode(DEAD_LETTER, dead))]

    def _copy_record(
        self, event: dict[str, Any], copy: PlannedCopy, *, fallback: bool = False
    ) -> Record:
        try:
            value = self.codec.encode(
                JOURNAL_COPY, journal_copy_record(event, copy, policy_digest=self.policy_digest)
            )
        except Exception:
            if not fallback:
                raise
            # the subject and Message-ID are the sender's text: without them the copy still
            # carries the original, which holds them
            value = self.codec.encode(
                JOURNAL_COPY,
                journal_copy_record(
                    event, copy, header_text=False, policy_digest=self.policy_digest
                ),
            )
        return (self.journal_topic, copy.copy_id, value)

    @staticmethod
    def _log_decision(decision: Decision) -> None:
        for error in decision.header_errors:
            log.warning(
                "event %s: header field %s could not be parsed; its recipients are typed "
                "Recipient:",
                decision.event_id,
                error,
            )
        for bad in decision.invalid_values:
            log.warning(
                "event %s: %s of %s is not a valid journal address: %r (ignored)",
                decision.event_id,
                bad.attribute,
                bad.address,
                bad.value,
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event %s: %s",
                decision.event_id,
                decision.skip_reason
                or ", ".join(f"{c.journal_address} ({c.copy_id})" for c in decision.copies),
            )

    # -- transactions -------------------------------------------------------------------------

    @staticmethod
    def _classify(what: str, exc: KafkaException, deadline: float) -> None:
        """Return when the call may be retried; raise otherwise."""
        err = exc.args[0] if exc.args else None
        if not isinstance(err, KafkaError):
            metrics.KAFKA_ERRORS.labels("fatal").inc()
            raise FatalError(f"{what}: {err}") from None
        if err.fatal():
            metrics.KAFKA_ERRORS.labels("fatal").inc()
            raise _ProducerFatal(f"{what}: {err}") from None
        if err.txn_requires_abort():
            metrics.KAFKA_ERRORS.labels("abortable").inc()
            raise _AbortRequired(f"{what}: {err}") from None
        if err.retriable() and time.monotonic() < deadline:
            metrics.KAFKA_ERRORS.labels("retriable").inc()
            log.warning("%s: %s (retrying)", what, err)
            return
        metrics.KAFKA_ERRORS.labels("fatal").inc()
        raise FatalError(f"{what}: {err}") from None

    def _txn_call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, retried while its error is retriable -- however long the outage; a
        restart would not end it sooner. Raises :class:`_Stopping` when asked to stop."""
        delay = 0.05
        try:
            while True:
                self._txn_started = time.monotonic()
                try:
                    return self._calls.call(fn, args, TXN_CALL_TIMEOUT_SECONDS + 15)
                except Stuck:
                    raise _ProducerStuck(f"{what} blocked past its timeout") from None
                except KafkaException as exc:
                    self._classify(what, exc, float("inf"))
                self._txn_started = None
                if self._stop.wait(delay):
                    raise _Stopping(what)
                delay = min(delay * 2, 2.0)
        finally:
            self._txn_started = None

    def _timed_out_by_coordinator(self) -> bool:
        """Whether the open transaction is older than ``transaction.timeout.ms``: then the
        coordinator has aborted it and bumped our epoch, which librdkafka reports as fatal."""
        if self._txn_begun is None:
            return False
        timeout_ms = self._producer_settings.get("transaction.timeout.ms", 60_000)
        return time.monotonic() - self._txn_begun >= int(timeout_ms) / 1000

    def _recover_producer(self, exc: FatalError) -> None:
        """Replace the producer after ``exc`` when a restart would do no better: it is stuck,
        or it went fatal because an outage outlasted the transaction timeout. A fence while
        the transaction was young means a newer instance owns our transactional id: stop."""
        if isinstance(exc, _ProducerFatal):
            if not self._timed_out_by_coordinator():
                raise exc
            now = time.monotonic()
            recent = [
                t for t in self._fatal_replacements if now - t < FATAL_REPLACEMENT_WINDOW_SECONDS
            ]
            if len(recent) >= MAX_FATAL_REPLACEMENTS:
                raise FatalError(f"{exc} (producer already replaced {len(recent)} times)")
            self._fatal_replacements = [*recent, now]
        self._replace_producer(str(exc))

    def _replace_producer(self, reason: str) -> None:
        """A new producer with the same transactional id fences the old one and aborts its open
        transaction (init_transactions); a new one that gets stuck too is replaced again."""
        while True:
            assert self.producer is not None
            # keep the old client referenced: destroying a client while a call is blocked
            # inside it (on its daemon thread) is not safe
            self._abandoned.append(self.producer)
            self.producer = make_producer(
                self.config, transactional_id=self.transactional_id, role="journal"
            )
            self._in_transaction = False
            self._txn_begun = None
            metrics.KAFKA_ERRORS.labels("producer_replaced").inc()
            log.warning("replacing the transactional producer (same transactional id): %s", reason)
            try:
                self._txn_call("init_transactions", self.producer.init_transactions, 30)
                return
            except _ProducerStuck as exc:
                reason = str(exc)

    def stuck_seconds(self) -> float:
        """How long the current attempt of a transactional call has been running; 0 when none
        is. A watchdog uses it: after a full cluster outage librdkafka was seen to block in
        such a call past its timeout (docs/reliability.md)."""
        started = self._txn_started
        return 0.0 if started is None else time.monotonic() - started

    def _produce(self, topic: str, key: str | bytes | None, value: bytes) -> None:
        assert self.producer is not None
        deadline = time.monotonic() + RETRY_DEADLINE_SECONDS
        while True:
            try:
                self.producer.produce(topic, value, key)
                return
            except BufferError:  # local queue full: let librdkafka send, then try again
                self.producer.poll(0.05)
            except KafkaException as exc:
                self._classify("produce", exc, deadline)
                self.producer.poll(0.1)

    def _transact(self, items: list[_Item], answers: dict[Any, list[str]]) -> None:
        """Decide ``items`` and produce their records in one transaction with their offsets.
        Records are produced as they are decided, so librdkafka sends while Python decides."""
        assert self.producer is not None and self.consumer is not None
        offsets: dict[tuple[str, int], int] = {}
        for it in items:
            topic, partition, offset = _position(it.msg)
            offsets[(topic, partition)] = max(offsets.get((topic, partition), -1), offset + 1)
        tallies = _Tallies()
        try:
            self._txn_call("begin_transaction", self.producer.begin_transaction)
            self._in_transaction = True
            self._txn_begun = time.monotonic()
            for item in items:
                for topic, key, value in self._records_for(item, answers, tallies):
                    self._produce(topic, key, value)
            self._after_produce()
            started = time.perf_counter()
            self._txn_call(
                "send_offsets_to_transaction",
                self.producer.send_offsets_to_transaction,
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                self.consumer.consumer_group_metadata(),
                TXN_CALL_TIMEOUT_SECONDS,
            )
            self._before_commit()
            self._txn_call(
                "commit_transaction", self.producer.commit_transaction, TXN_CALL_TIMEOUT_SECONDS
            )
            self._in_transaction = False
            self._txn_begun = None
            metrics.TRANSACTION_COMMIT_SECONDS.observe(time.perf_counter() - started)
        except _AbortRequired as exc:
            log.warning("transaction aborted, rewinding %d messages: %s", len(items), exc)
            try:
                self._abort()
            except (_ProducerStuck, _ProducerFatal) as failed:
                self._recover_producer(failed)
                self._rewind_to_committed([it.msg for it in items])
                return
            self._rewind([it.msg for it in items])
            return
        except (_ProducerStuck, _ProducerFatal) as exc:
            log.warning("%s: rewinding %d messages", exc, len(items))
            self._recover_producer(exc)
            # the lost call may have committed the batch (offsets included) before it failed:
            # go back to what the group committed, not to the batch's start
            self._rewind_to_committed([it.msg for it in items])
            return
        metrics.TRANSACTIONS.labels("committed").inc()
        metrics.BATCH_MESSAGES.observe(len(items))
        tallies.publish()

    # the transaction's crash sites (the replay has its own)
    def _after_produce(self) -> None:
        fault_point("journal.txn.after_produce")

    def _before_commit(self) -> None:
        fault_point("journal.txn.before_commit")

    def _abort(self) -> None:
        assert self.producer is not None
        try:
            self._txn_call(
                "abort_transaction", self.producer.abort_transaction, TXN_CALL_TIMEOUT_SECONDS
            )
        except _AbortRequired as exc:  # abort cannot require an abort: treat as fatal
            raise FatalError(str(exc)) from None
        self._in_transaction = False
        self._txn_begun = None
        metrics.TRANSACTIONS.labels("aborted").inc()

    def _rewind(self, msgs: Sequence[Message]) -> None:
        """Seek each partition back to its first message in ``msgs``: they are consumed again."""
        assert self.consumer is not None
        for (topic, partition), offset in _first_offsets(msgs).items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # revoked meanwhile: its new owner starts from the committed offset anyway
                log.info("not rewinding %s/%d: %s", topic, partition, exc.args[0])

    def _rewind_to_committed(self, msgs: Sequence[Message]) -> None:
        """Seek each partition of ``msgs`` to the group's committed offset (read_committed
        consumers fetch stable offsets: a pending transaction is resolved first); to the first
        message of ``msgs`` where nothing is committed yet."""
        assert self.consumer is not None
        first = _first_offsets(msgs)
        wanted = [TopicPartition(t, p) for t, p in first]
        delay = 0.5
        while True:
            try:
                committed = self.consumer.committed(wanted, timeout=TXN_CALL_TIMEOUT_SECONDS)
                break
            except KafkaException as exc:
                log.warning("reading committed offsets: %s (retrying)", exc)
                if self._stop.wait(delay):
                    raise _Stopping("committed offsets") from None
                delay = min(delay * 2, 5.0)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else first[(tp.topic, tp.partition)]
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.info("not rewinding %s/%d: %s", tp.topic, tp.partition, exc.args[0])

    # -- directory outage ---------------------------------------------------------------------

    def _wait_out_outage(self, probe: Callable[[], object]) -> None:
        """Retry ``probe`` with backoff until it succeeds, polling the paused consumer so the
        worker stays in its group; a message that arrives anyway is rewound, never dropped."""
        assert self.consumer is not None
        cfg = self.config.directory
        delay = cfg.retry_initial_seconds
        started = time.monotonic()
        metrics.DIRECTORY_AVAILABLE.set(0)
        self.consumer.pause(self.consumer.assignment())
        try:
            while not self._stop.is_set():
                until = time.monotonic() + delay
                while not self._stop.is_set() and time.monotonic() < until:
                    msg = self.consumer.poll(min(0.5, max(0.0, until - time.monotonic())))
                    if msg is not None and msg.error() is None:
                        # newly assigned partitions are not paused: put the message back
                        self.consumer.seek(TopicPartition(*_position(msg)))
                    self.consumer.pause(self.consumer.assignment())
                    self._update_lag(paused=True)  # the backlog growing in an outage is news
                try:
                    probe()
                except DirectoryUnavailable as exc:
                    log.warning("still unavailable (next try in %.1fs): %s", delay, exc)
                    delay = min(delay * 2, cfg.retry_max_seconds)
                    continue
                log.info("available again after %.1fs", time.monotonic() - started)
                return
        finally:
            metrics.DIRECTORY_OUTAGE_SECONDS.inc(time.monotonic() - started)
            metrics.DIRECTORY_AVAILABLE.set(1)
            if not self._stop.is_set():
                self.consumer.resume(self.consumer.assignment())

    # -- lag ----------------------------------------------------------------------------------

    def _update_lag(self, paused: bool = False) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_SECONDS or self.consumer is None:
            return
        self._lag_at = now
        assignment = self.consumer.assignment()
        if not assignment:
            return
        for tp in self.consumer.position(assignment):
            try:
                # the fetches keep cached watermarks fresh, except while partitions are paused
                lag = partition_lag(self.consumer, tp, cached=not paused)
            except KafkaException:
                continue
            if lag is None:
                continue  # nothing fetched yet: position or end unknown
            self._lag_partitions.add(tp.partition)
            metrics.CONSUMER_LAG.labels(str(tp.partition)).set(lag)


def _reason_class(reason: str | None) -> str:
    return (reason or "unknown").split(" ", 1)[0]


@dataclass
class _Tallies:
    """Metric increments of a batch, published only once its transaction committed."""

    decided: Tally[str] = field(default_factory=Tally)
    copies: Tally[tuple[str, str]] = field(default_factory=Tally)
    skips: Tally[str] = field(default_factory=Tally)
    invalid: Tally[str] = field(default_factory=Tally)
    protected: int = 0
    dead_letters: Tally[str] = field(default_factory=Tally)
    header_errors: Tally[str] = field(default_factory=Tally)
    fallbacks: int = 0

    def add(self, decision: Decision) -> None:
        self.decided["journaled" if decision.copies else "skipped"] += 1
        if decision.skip_reason:
            self.skips[decision.skip_reason] += 1
        for c in decision.copies:
            direction = "+".join(str(d).lower() for d in c.directions)
            source = "+".join(str(s).lower() for s in c.sources)
            self.copies[(direction, source)] += 1
        for bad in decision.invalid_values:
            self.invalid[str(bad.direction).lower()] += 1
        self.protected += len(decision.protected_recipients)
        for error in decision.header_errors:
            self.header_errors[error.split(":", 1)[0]] += 1
        if decision.fallback:
            self.fallbacks += 1

    def publish(self) -> None:
        for outcome, n in self.decided.items():
            metrics.MESSAGES_DECIDED.labels(outcome).inc(n)
        for (direction, source), n in self.copies.items():
            metrics.COPIES_EMITTED.labels(direction, source).inc(n)
        for reason, n in self.skips.items():
            metrics.SKIPS.labels(reason).inc(n)
        for direction, n in self.invalid.items():
            metrics.INVALID_JOURNAL_ADDRESSES.labels(direction).inc(n)
        if self.protected:
            metrics.PROTECTED_RECIPIENTS.inc(self.protected)
        for name, n in self.header_errors.items():
            metrics.HEADER_PARSE_ERRORS.labels(name).inc(n)
        if self.fallbacks:
            metrics.FALLBACK_DECISIONS.inc(self.fallbacks)
        for reason, n in self.dead_letters.items():
            metrics.DEAD_LETTERS.labels(reason).inc(n)
            metrics.MESSAGES_DECIDED.labels("dead_lettered").inc(n)
