"""Journal-copy delivery on the tiered consumer: journal copies (and their NDRs) from the
journal topic and delivery's retry tiers to their routes (:mod:`delivery.routes`; the smart
host by default), outcomes and NDRs produced.

Per attempt (:func:`mailjournal.smtp.outcomes.decide`): delivered, re-queued on a retry tier,
or given up -- a journal copy that failed permanently or expired gets an NDR to its direction's
NDR address (attempted at once, from then on a copy like any other); an NDR that fails, or a
copy without an NDR address, is dead-lettered.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from delivery import metrics
from delivery.ndr import build_ndr, make_ndr_copy
from delivery.report import envelope_sender, outgoing_message
from delivery.retry import tier_topics
from delivery.routes import Route, Routes, pool_size
from mailjournal.config import Config
from mailjournal.consumer.handler import Admission, Production, Record, Settings
from mailjournal.dsn import Failure
from mailjournal.faults import fault_point
from mailjournal.metrics import children
from mailjournal.smtp import metrics as smtp_metrics
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.copies import (
    SendStats,
    admit_copy,
    consumer_settings,
    copy_production,
    given_up,
    outcome,
)
from mailjournal.smtp.outcomes import (
    Action,
    Decision,
    OutcomeFields,
    SmtpResult,
    decide,
    retry_copy,
)
from mailjournal.smtp.wire import Outgoing
from schemas import now_millis
from schemas.events import JournalCopyKind, to_millis

log = logging.getLogger(__name__)

KINDS = (JournalCopyKind.JOURNAL, JournalCopyKind.NDR)
_ATTEMPTS = children(smtp_metrics.ATTEMPTS)
_END_TO_END = children(metrics.END_TO_END_SECONDS)


class DeliveryHandler:
    """Journal copies from the journal topic to the smart host (the delivery stage)."""

    name = "delivery"

    def __init__(
        self, config: Config, *, smtp: SmtpClient | None = None, rng: random.Random | None = None
    ):
        self.config = config
        self.cfg = config.delivery
        topics = config.kafka.topics
        self.settings: Settings = dataclasses.replace(
            consumer_settings(
                self.cfg,
                group=config.kafka.delivery_group,
                topic=topics.journal.name,
                tier_topics=tier_topics(config),
            ),
            concurrency=pool_size(self.cfg),
        )
        self.outcomes_topic = topics.outcomes.name
        self.dead_letter_topic = topics.dead_letters.name
        self.routes = Routes(self.cfg, smtp=smtp, dns_timeout=config.relay.dns_timeout_seconds)
        self._rng = rng or random.Random()
        self.stats = SendStats()
        # read once, as the journal worker does: per copy it was a file read (19 us of the
        # ~400 us a 1 KB copy costs), and a key file broken while running (a non-atomic
        # rewrite) turned every report of that moment into a bare, unstamped copy; a new key
        # takes effect on restart, like the journal worker's and the evidence writer's
        self._stamp_key = config.journal.stamp_key()

    @property
    def destination(self) -> str:
        return self.routes.destination

    def admit(self, record: Record, now_ms: int) -> Admission:
        return admit_copy(record, KINDS, self.name, now_ms)

    def close(self) -> None:
        self.routes.close()

    def process(self, record: Record, value: dict[str, Any]) -> list[Production]:
        """One attempt of a journal copy or NDR."""
        copy = value
        kind = str(copy.get("kind") or "JOURNAL")
        message = outgoing_message(copy, self.config, self._stamp_key)
        address = str(copy["journal_address"])
        route = self.routes.route_for(address)
        with route.gate.enter() as admitted:
            if admitted:
                result = self.routes.send(route, envelope_sender(copy), address, message)
        now = now_millis()
        if not admitted:
            return self._defer(copy, route, now)
        decision = decide(copy, result, now, self.cfg, self._rng)
        _ATTEMPTS(kind.lower(), result.result_class.value).inc()
        self.stats.count("attempts")
        if decision.action is Action.DELIVERED:
            fault_point("delivery.after_remote_250")
            received = to_millis(copy["received_at"])
            if received:
                _END_TO_END(kind.lower()).observe(max(0, now - received) / 1000)
            self.stats.count("delivered")
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
            self.stats.count("retried")
            smtp_metrics.RETRIES_SCHEDULED.labels(str(decision.tier)).inc()
            return [
                copy_production(
                    self.settings.tiers.topic(decision.tier),
                    retry_copy(copy, decision),
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
        return self._failed(record, copy, message, result, decision, now)

    def _defer(self, copy: dict[str, Any], route: Route, now: int) -> list[Production]:
        """The route's sessions and waiters are full: the copy waits on the first retry tier,
        not attempted (its attempt count and expiry unchanged)."""
        metrics.ROUTE_ATTEMPTS.labels(route.name, "deferred").inc()
        self.stats.count("deferred")
        not_before = now + int(self.cfg.retry_delays_seconds[0] * 1000)
        attempts = int(copy.get("attempt") or 0)
        reply = (
            f"4.4.5 route {route.name} busy ({route.gate.concurrency} sessions in use): deferred"
        )
        return [
            copy_production(
                self.settings.tiers.topic(0), dict(copy, not_before=not_before), "deferred"
            ),
            self._outcome(
                copy, OutcomeFields("RETRYING", attempts, reply, now, next_attempt_ms=not_before)
            ),
        ]

    def _failed(
        self,
        record: Record,
        copy: dict[str, Any],
        message: Outgoing,
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
                record,
                copy,
                decision,
                now,
                reason,
                "ndr_expired" if decision.expired else "ndr_failed",
            )
        if not copy.get("ndr_address"):
            reason = f"journal copy to {address} {how} and has no NDR address: {decision.reply}"
            return self._give_up(record, copy, decision, now, reason, "no_ndr_address")
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
            build_ndr(
                copy, message.data(), failure, self.config, now_ms=now, stamp_key=self._stamp_key
            ),
            self.config,
            now_ms=now,
        )
        for direction in copy.get("directions") or ["UNKNOWN"]:
            metrics.NDRS.labels(
                str(direction).lower(), "expired" if decision.expired else "permanent"
            ).inc()
        self.stats.count("ndrs")
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
        productions = self.process(record, ndr)
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

    def _give_up(
        self,
        record: Record,
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
            given_up(self.dead_letter_topic, record, final, reason, reason_class),
            self._outcome(
                copy, OutcomeFields("DEAD_LETTERED", decision.attempts, decision.reply, now)
            ),
        ]

    def _outcome(self, copy: dict[str, Any], fields: OutcomeFields) -> Production:
        return outcome(self.outcomes_topic, copy, fields)
