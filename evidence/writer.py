"""The receipt writer: consume messages, copies and outcomes; produce signed, chained receipts.

One transactional loop (like the journal worker's): each batch's receipts, its checkpoint (when
due), the changelog of the join state and the consumed offsets are committed in one Kafka
transaction, so after any crash the receipts topic holds each receipt exactly once and the
state restored from the changelog is exactly the state those offsets imply.

Single writer: every partition of the three input topics is assigned to this one process (the
join needs all of them) and the transactional id is the fixed ``kafka.evidence_group``; a
second writer started by mistake fences the first (``init_transactions``), which exits, so two
writers never interleave a chain. An outage of the writer delays receipts, never loses them:
everything it has not committed is read again.

At start: the changelog is read back (``receipts_state``), the chain heads are the newest
receipt of each partition (their signatures checked), and the policy digest is compared with
the last ``PolicyChange`` on the evidence topic; a different one is recorded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from evidence import metrics
from evidence.chain import Chains, Head, head_of
from evidence.keys import Keyring, load_public_key, load_signing_key
from evidence.read import TIMEOUT, decoded, last_records, read_all
from evidence.state import Entry, Join, receipt_partition
from evidence.verify import verify_chains
from mailjournal.config import Config
from mailjournal.consumer.stage import StageFatal
from mailjournal.faults import fault_point
from mailjournal.kafka import close_clients, make_admin, make_consumer, make_producer
from mailjournal.policy import canonical_json, policy_digest, policy_document
from schemas import (
    DELIVERY_OUTCOME,
    JOURNAL_CHECKPOINT,
    JOURNAL_COPY,
    JOURNAL_RECEIPT,
    MESSAGE_RECEIVED,
    POLICY_CHANGE,
    SchemaError,
    default_codec,
    now_millis,
)
from schemas.records import policy_change

log = logging.getLogger(__name__)

BATCH_MAX = 500
TXN_TIMEOUT = 30.0


class FatalError(StageFatal):
    """The writer cannot go on (fenced, fatal Kafka error): exit non-zero, be restarted."""


class ReceiptWriter:
    def __init__(self, config: Config):
        self.config = config
        ev = config.evidence
        assert ev.signing_key_file is not None
        self.key = load_signing_key(ev.signing_key_file)
        self.keyring = Keyring.of(
            [self.key.public, *(load_public_key(p) for p in ev.verify_key_files)]
        )
        topics = config.kafka.topics
        self.inputs = {
            topics.messages.name: MESSAGE_RECEIVED,
            topics.journal.name: JOURNAL_COPY,
            topics.outcomes.name: DELIVERY_OUTCOME,
        }
        self.messages_topic = topics.messages.name
        self.journal_topic = topics.journal.name
        self.receipts_topic = topics.receipts.name
        self.evidence_topic = topics.evidence.name
        self.state_topic = topics.receipts_state.name
        self.digest = policy_digest(config)
        self.codec = default_codec()
        self.join = Join(config.organization.trusted_networks)
        self.chains: Chains | None = None
        self.n_partitions = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._last_checkpoint = 0.0
        self._expired_at = 0  # when the done markers were last pruned (ms)
        self._since_checkpoint = 0
        self._barrier: tuple[dict[int, int], dict[int, int]] | None = None
        self._synced_at = 0.0
        self._pending_policy: dict[str, Any] | None = None
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        return self._ready.is_set() and not self._stop.is_set()

    # -- start --------------------------------------------------------------------------------

    def _restore(self) -> None:
        for _p, _o, key, value in read_all(self.config, self.state_topic):
            if key is None:
                continue
            event_id = key.decode("utf-8")
            if value is None:
                self.join.forget(event_id)
            else:
                self.join.restored(event_id, Entry.from_json(json.loads(value)))
        heads: dict[int, Head] = {}
        tails = last_records(self.config, self.receipts_topic, JOURNAL_RECEIPT)
        verdict = verify_chains(tails.values(), (), self.keyring)
        for problem in verdict.problems:
            metrics.VERIFICATION_FAILURES.labels(problem.kind).inc()
            log.error("chain head at start: %s", problem.line())
        for p, receipt in tails.items():
            heads[p] = head_of(receipt)
        self.chains = Chains(self.key, self.n_partitions, heads)
        last_policy = None
        for _p, change in decoded(self.config, self.evidence_topic, POLICY_CHANGE):
            last_policy = change
        old = last_policy["new_digest"] if last_policy else None
        if old != self.digest:
            self._pending_policy = self.key.sign(
                policy_change(
                    at=now_millis(),
                    old_digest=old,
                    new_digest=self.digest,
                    policy=canonical_json(policy_document(self.config)),
                )
            )
            log.info("policy changed: %s -> %s", old, self.digest)
        log.info(
            "restored %d pending messages, chain heads %s",
            self.join.pending(),
            {p: h.seq for p, h in sorted(heads.items())},
        )

    def _assign(self) -> None:
        assert self.consumer is not None
        wanted = []
        for topic in self.inputs:
            meta = self.consumer.list_topics(topic, timeout=TIMEOUT).topics[topic]
            wanted += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = self.consumer.committed(wanted, timeout=TIMEOUT)
        self.consumer.assign(
            [
                TopicPartition(
                    tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                )
                for tp in committed
            ]
        )

    def run(self) -> None:
        group = self.config.kafka.evidence_group
        self.producer = make_producer(self.config, transactional_id=group, role="evidence")
        self.consumer = make_consumer(self.config, group, role="evidence")
        self.admin = make_admin(self.config, role="evidence")
        failed = True  # until the loop ends by a stop
        try:
            # fences a previous writer and aborts its open transaction before anything is read
            self.producer.init_transactions(TXN_TIMEOUT)
            meta = self.consumer.list_topics(self.receipts_topic, timeout=TIMEOUT)
            self.n_partitions = len(meta.topics[self.receipts_topic].partitions)
            self._restore()
            self._assign()
            self._ready.set()
            log.info("receipt writer consuming %s", ", ".join(self.inputs))
            while not self._stop.is_set():
                msgs = self.consumer.consume(BATCH_MAX, self.config.evidence.batch_max_ms / 1000)
                batch = [m for m in msgs if self._usable(m)]
                self._sync()
                self._process(batch)
            failed = False
        except KafkaException as exc:
            raise FatalError(str(exc.args[0])) from None
        finally:
            self._ready.clear()
            close_clients("receipt writer", self.consumer, self.producer, failed=failed)

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.fatal():
            raise FatalError(f"consumer: {err}")
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer: %s", err)
        return False

    # -- how far the journal worker has decided -----------------------------------------------

    def _sync(self) -> None:
        """Learn the journal worker's committed offsets on the messages topic, then wait until
        this writer has read the journal topic up to where it stood then: every message below
        those offsets has all its copies read."""
        assert self.consumer is not None
        now = time.monotonic()
        if self._barrier is not None:
            decided, journal_ends = self._barrier
            positions = self.consumer.position(
                [TopicPartition(self.journal_topic, p) for p in journal_ends]
            )
            if all(
                tp.offset >= journal_ends[tp.partition]
                for tp in positions
                if journal_ends[tp.partition] > 0
            ):
                self.join.decided(decided)
                self._barrier = None
            return
        if now - self._synced_at < self.config.evidence.sync_interval_seconds:
            return
        self._synced_at = now
        request = ConsumerGroupTopicPartitions(self.config.kafka.journal_group)
        future = self.admin.list_consumer_group_offsets([request], request_timeout=TIMEOUT)
        result = next(iter(future.values())).result(timeout=TIMEOUT)
        decided = {
            tp.partition: tp.offset
            for tp in result.topic_partitions or ()
            if tp.topic == self.messages_topic and tp.offset >= 0
        }
        meta = self.consumer.list_topics(self.journal_topic, timeout=TIMEOUT)
        ends = {}
        for p in meta.topics[self.journal_topic].partitions:
            ends[p] = self.consumer.get_watermark_offsets(
                TopicPartition(self.journal_topic, p), timeout=TIMEOUT, cached=False
            )[1]
        self._barrier = (decided, ends)

    # -- one batch ----------------------------------------------------------------------------

    def _apply(self, msg: Message, now: int) -> None:
        topic = msg.topic()
        assert topic is not None
        value = msg.value()
        if value is None:
            return
        try:
            record = self.codec.decode(value, self.inputs[topic])
        except SchemaError as exc:
            # the audit names an unreadable record; the writer cannot receipt it
            log.warning("%s[%s]@%s: %s", topic, msg.partition(), msg.offset(), exc)
            return
        if topic == self.messages_topic:
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            self.join.add_message(record, partition, offset, now)
        elif topic == self.journal_topic:
            self.join.add_copy(record, now)
        else:
            self.join.add_outcome(record, now)

    def _process(self, batch: list[Message]) -> None:
        assert self.producer is not None and self.consumer is not None and self.chains
        now = now_millis()
        for msg in batch:
            self._apply(msg, now)
        ready = self.join.ready()
        checkpoint_due = (
            self._since_checkpoint + len(ready) > 0
            and time.monotonic() - self._last_checkpoint
            >= self.config.evidence.checkpoint_interval_seconds
        )
        if not batch and not ready and not checkpoint_due and self._pending_policy is None:
            return
        heads = self.chains.snapshot()
        self.producer.begin_transaction()
        try:
            if self._pending_policy is not None:
                self._produce(
                    self.evidence_topic,
                    None,
                    "policy",
                    self.codec.encode(POLICY_CHANGE, self._pending_policy),
                )
            written_at = now_millis()
            lags = []
            for n, event_id in enumerate(ready):
                body = self.join.body(event_id, self.digest)
                p = receipt_partition(event_id, self.n_partitions)
                receipt = self.chains.seal(body, p, written_at)
                self._produce(
                    self.receipts_topic,
                    p,
                    event_id,
                    self.codec.encode(JOURNAL_RECEIPT, receipt),
                    written_at,
                )
                finals = [c["final_at"] for c in body["copies"]]
                lags.append(written_at - max(finals or [body["received_at"]]))
                self.join.mark_done(event_id, written_at)
                if n == 0:
                    fault_point("evidence.txn.mid_batch")
            if checkpoint_due:
                cp = self.chains.checkpoint(now_millis(), self.digest)
                self._produce(
                    self.evidence_topic,
                    None,
                    cp["checkpoint_id"],
                    self.codec.encode(JOURNAL_CHECKPOINT, cp),
                )
            pruned = now - self._expired_at > 60_000
            expired = self.join.expired(now) if pruned else []
            for event_id in expired:
                self.join.dirty.discard(event_id)
                self._produce(self.state_topic, None, event_id, None)
            for event_id in sorted(self.join.dirty):
                entry = self.join.entries[event_id]
                self._produce(
                    self.state_topic, None, event_id, json.dumps(entry.to_json()).encode()
                )
            offsets = self._offsets(batch)
            if offsets:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), TXN_TIMEOUT
                )
            fault_point("evidence.txn.before_commit")
            self.producer.commit_transaction(TXN_TIMEOUT)
        except KafkaException as exc:
            err = exc.args[0]
            metrics.TRANSACTIONS.labels("failed").inc()
            if err.txn_requires_abort():
                self.producer.abort_transaction(TXN_TIMEOUT)
                self.chains.restore(heads)
                self._rewind_restart()
                return
            raise FatalError(f"transaction: {err}") from None
        self.join.dirty.clear()
        if pruned:
            self._expired_at = now
        metrics.TRANSACTIONS.labels("committed").inc()
        self._pending_policy = None
        metrics.RECEIPTS_WRITTEN.inc(len(ready))
        for lag in lags:
            metrics.RECEIPT_LAG.observe(max(0, lag) / 1000)
        self._since_checkpoint += len(ready)
        if checkpoint_due:
            metrics.CHECKPOINTS_WRITTEN.inc()
            self._last_checkpoint = time.monotonic()
            self._since_checkpoint = 0
        metrics.PENDING.set(self.join.pending())

    def _rewind_restart(self) -> None:
        # the join state in memory is ahead of what was committed: start over from the log
        raise FatalError("transaction aborted: restarting from the committed state")

    def _produce(
        self,
        topic: str,
        partition: int | None,
        key: str,
        value: bytes | None,
        timestamp: int | None = None,
    ) -> None:
        assert self.producer is not None
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                self.producer.produce(topic, value, key.encode("utf-8"), **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    @staticmethod
    def _offsets(batch: list[Message]) -> list[TopicPartition]:
        out: dict[tuple[str, int], int] = {}
        for m in batch:
            topic, p, o = m.topic(), m.partition(), m.offset()
            assert topic is not None and p is not None and o is not None
            out[(topic, p)] = max(out.get((topic, p), -1), o + 1)
        return [TopicPartition(t, p, o) for (t, p), o in out.items()]
