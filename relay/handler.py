"""The relay on the tiered consumer: originals of inline listeners from the messages topic (in
the relay's own consumer group) and the relay's retry tiers to their next hops, with DSNs to
their senders.

Per recipient of an attempt (:func:`mailjournal.smtp.outcomes.decide`): delivered, retried (only
the recipients still owed are re-queued, on the relay's tiers), or given up -- reported to the
original sender in a DSN when they asked for one (attempted at once, like an NDR), otherwise
the original is kept on the dead-letter topic for a person. One outcome event per attempt.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from mailjournal.config import Config
from mailjournal.consumer.handler import Admission, Production, Record, Settings, Source, Take
from mailjournal.dsn import Failure
from mailjournal.faults import fault_point
from mailjournal.metrics import children
from mailjournal.smtp import metrics as smtp_metrics
from mailjournal.smtp.copies import (
    SendStats,
    admit_copy,
    consumer_settings,
    copy_production,
    given_up,
    outcome,
)
from mailjournal.smtp.outcomes import Action, Decision, OutcomeFields, decide, retry_copy
from relay import metrics
from relay.mx import Resolver
from relay.retry import relay_delivery_config, relay_tier_topics
from relay.routing import relay_copies, with_recipients
from relay.sender import RelaySender
from relay.sender_dsn import RecipientFailure, dsn_recipients, make_dsn_copy
from schemas import MESSAGE_RECEIVED, SchemaError, decode, now_millis
from schemas.events import JournalCopyKind, to_millis

log = logging.getLogger(__name__)
_ATTEMPTS = children(smtp_metrics.ATTEMPTS)

KINDS = (JournalCopyKind.RELAY,)


class RelayHandler:
    """Originals from the messages topic to their next hops (the relay stage, inline mode)."""

    name = "relay"

    def __init__(
        self,
        config: Config,
        *,
        sender: RelaySender | None = None,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.cfg = relay_delivery_config(config)
        topics = config.kafka.topics
        self.settings: Settings = consumer_settings(
            self.cfg,
            group=config.kafka.relay_group,
            topic=topics.messages.name,
            tier_topics=relay_tier_topics(config),
        )
        self.outcomes_topic = topics.outcomes.name
        self.dead_letter_topic = topics.dead_letters.name
        self._listeners = config.relay_listeners()
        self.sender = sender or RelaySender(config, self.cfg, resolver=resolver)
        self._rng = rng or random.Random()
        self.stats = SendStats()

    @property
    def destination(self) -> str:
        return self.sender.address

    def close(self) -> None:
        self.sender.close()

    # -- admission ---------------------------------------------------------------------------

    def admit(self, record: Record, now_ms: int) -> Admission:
        if record.source is Source.RETRY:
            return admit_copy(record, KINDS, self.name, now_ms)
        return self._relayable(record)

    def _relayable(self, record: Record) -> Take | None:
        """The MessageReceived of a relay listener, or None (the record is done at once)."""
        try:
            # the original as a view of the record: most records are not relayed at all
            event = decode(record.value, MESSAGE_RECEIVED, tail_view=True)
        except SchemaError as exc:
            # the journal worker dead-letters it (one dead letter per bad record, not two)
            log.error("relay: undecodable message at %s: %s", record.where, exc)
            return None
        if event.get("listener") not in self._listeners:
            return None
        return Take(event)

    # -- attempts ----------------------------------------------------------------------------

    def process(self, record: Record, value: dict[str, Any]) -> list[Production]:
        """A fresh original: one RELAY copy per destination, each attempted; a retried copy."""
        copies = relay_copies(value, self.config) if record.source is Source.INPUT else [value]
        return [p for c in copies for p in self._attempt(record, c)]

    def _attempt(self, record: Record, copy: dict[str, Any]) -> list[Production]:
        """One attempt of a RELAY copy: per recipient delivered, retried or given up; a DSN to
        the sender for those given up who asked for one (attempted at once, like an NDR)."""
        env = copy["relay"]
        rcpts = env["recipients"]
        results = self.sender.send(copy)
        fault_point("relay.between_recipients")
        now = now_millis()
        is_dsn = copy.get("about_copy_id") is not None
        delivered: list[dict[str, Any]] = []
        retry: list[tuple[dict[str, Any], Decision]] = []
        failed: list[RecipientFailure] = []
        for rcpt, result in zip(rcpts, results, strict=True):
            decision = decide(copy, result, now, self.cfg, self._rng)
            _ATTEMPTS("relay", result.result_class.value).inc()
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
        self.stats.count("attempts")
        attempts = int(copy.get("attempt") or 0) + 1
        out: list[Production] = []
        if delivered:
            self.stats.count("delivered")
            received = to_millis(copy["received_at"])
            if received and not is_dsn:
                metrics.RELAY_LATENCY.observe(max(0, now - received) / 1000)
        requeued: dict[str, Any] | None = None
        if retry:
            self.stats.count("retried")
            first = retry[0][1]
            assert first.tier is not None
            smtp_metrics.RETRIES_SCHEDULED.labels(str(first.tier)).inc()
            requeued = retry_copy(with_recipients(copy, [r for r, _ in retry]), first)
            out += self._delay_dsn(record, copy, requeued, retry, now)
            out.append(
                copy_production(
                    self.settings.tiers.topic(first.tier),
                    requeued,
                    f"relay retry tier {first.tier}",
                )
            )
        status = "DELIVERED" if delivered else "RETRYING"
        reply = next((r.reply for r in results if r.reply), "")
        if failed:
            given_up_copy = with_recipients(copy, [f.recipient for f in failed])
            wanted = dsn_recipients(copy, failed, "failed")
            if wanted:
                dsn = make_dsn_copy(given_up_copy, wanted, "failed", self.config, now_ms=now)
                metrics.RELAY_DSNS.labels("failed").inc()
                self.stats.count("ndrs")
                log.info(
                    "relay: %s: DSN %s to the sender for %d recipients",
                    copy["copy_id"],
                    dsn["copy_id"],
                    len(wanted),
                )
                out += self._attempt(record, dsn)
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
                final = dict(given_up_copy, attempt=attempts, last_reply=failed[0].failure.reply)
                out.append(
                    given_up(
                        self.dead_letter_topic,
                        record,
                        final,
                        reason,
                        f"relay_{why}",
                        source_topic=self.settings.tiers.topic(0),
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
            outcome(
                self.outcomes_topic,
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

    def _delay_dsn(
        self,
        record: Record,
        copy: dict[str, Any],
        requeued: dict[str, Any],
        retry: list[tuple[dict[str, Any], Decision]],
        now: int,
    ) -> list[Production]:
        """At most one delay DSN per copy, once it has waited ``delay_dsn_after_seconds``."""
        relay = self.config.relay
        if not relay.delay_dsn or copy["relay"].get("delay_notified"):
            return []
        if now - to_millis(copy["received_at"]) < relay.delay_dsn_after_seconds * 1000:
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
        return self._attempt(record, dsn)
