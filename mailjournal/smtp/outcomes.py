"""What an SMTP attempt means for a copy (pure): delivered, retry later, or given up.

- ``2xx`` to the whole transaction: delivered.
- ``4xx``, timeouts, refused or dropped connections, TLS or AUTH trouble with the smart host:
  temporary, retried until the expiry. Problems of the session (connect, greeting, EHLO,
  STARTTLS, AUTH) are always temporary, even with a 5xx: they say nothing about the message, and
  NDR-ing every copy because a password expired would bury the NDR address.
- ``5xx`` to MAIL, RCPT or DATA, or a local refusal of the message itself: permanent.
- Temporary past the expiry: given up as expired.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailjournal.config import DeliveryConfig
from mailjournal.consumer.retry import deadline_ms, plan_retry
from schemas.events import DeliveryOutcome, JournalCopyKind, to_millis
from schemas.records import delivery_outcome

# stages of an SMTP attempt; only the transaction's replies are about the message
SESSION_STAGES = frozenset({"connect", "greeting", "ehlo", "starttls", "auth", "rset"})
TRANSACTION_STAGES = frozenset({"mail", "rcpt", "data", "local"})


class ResultClass(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class SmtpResult:
    """The result of one delivery attempt."""

    code: int | None  # last SMTP reply code; None for network and local errors
    text: str  # reply text (enhanced status code and text) or the error
    stage: str  # where it ended: connect, greeting, ehlo, starttls, auth, mail, rcpt, data, local
    host: str = ""  # "host:port" of the smart host
    seconds: float = 0.0  # time of the transaction (MAIL to the reply after DATA)
    permanent_local: bool = False  # a local refusal of this message (no server could take it)

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}".strip() if self.code is not None else self.text

    @property
    def from_server(self) -> bool:
        return self.code is not None and not self.permanent_local

    @property
    def result_class(self) -> ResultClass:
        if self.permanent_local:
            return ResultClass.PERMANENT
        if self.code is None:
            return ResultClass.TRANSIENT
        if 200 <= self.code < 300 and self.stage == "data":
            return ResultClass.DELIVERED
        if 500 <= self.code < 600 and self.stage in TRANSACTION_STAGES:
            return ResultClass.PERMANENT
        return ResultClass.TRANSIENT


class Action(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    action: Action
    attempts: int  # attempts made, this one included
    reply: str
    first_attempt_ms: int
    tier: int | None = None
    not_before_ms: int | None = None
    expired: bool = False


def first_attempt_ms(copy: Mapping[str, Any], now_ms: int) -> int:
    value = copy.get("first_attempt_at")
    return to_millis(value) if value is not None else now_ms


def decide(
    copy: Mapping[str, Any],
    result: SmtpResult,
    now_ms: int,
    cfg: DeliveryConfig,
    rng: random.Random,
) -> Decision:
    """The next step for ``copy`` after the attempt that gave ``result`` at ``now_ms``."""
    attempt = int(copy.get("attempt") or 0)
    first = first_attempt_ms(copy, now_ms)
    common: dict[str, Any] = {
        "attempts": attempt + 1,
        "reply": result.reply,
        "first_attempt_ms": first,
    }
    klass = result.result_class
    if klass is ResultClass.DELIVERED:
        return Decision(Action.DELIVERED, **common)
    if klass is ResultClass.PERMANENT:
        return Decision(Action.FAILED, **common)
    deadline = deadline_ms(first, cfg.expiry_seconds)
    if now_ms >= deadline:
        return Decision(Action.FAILED, expired=True, **common)
    plan = plan_retry(attempt, now_ms, deadline, cfg.retry_delays_seconds, cfg.retry_jitter, rng)
    return Decision(Action.RETRY, tier=plan.tier, not_before_ms=plan.not_before_ms, **common)


def retry_copy(copy: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """The copy as re-queued on its retry tier."""
    assert decision.action is Action.RETRY and decision.not_before_ms is not None
    out = dict(copy)
    out.update(
        attempt=decision.attempts,
        not_before=decision.not_before_ms,
        first_attempt_at=decision.first_attempt_ms,
        last_reply=decision.reply,
    )
    return out


@dataclass(frozen=True)
class OutcomeFields:
    status: str
    attempts: int
    remote_reply: str | None
    at_ms: int
    next_attempt_ms: int | None = None
    ndr_copy_id: str | None = None
    delivered_to_host: str | None = None


def make_outcome(copy: Mapping[str, Any], f: OutcomeFields) -> DeliveryOutcome:
    """A DeliveryOutcome record (keyed by copy id on the compacted outcomes topic)."""
    return delivery_outcome(
        copy_id=copy["copy_id"],
        event_id=copy["event_id"],
        kind=copy.get("kind") or JournalCopyKind.JOURNAL,
        status=f.status,
        journal_address=copy["journal_address"],
        ndr_address=copy.get("ndr_address") or "",
        directions=copy.get("directions") or [],
        attempts=f.attempts,
        remote_reply=f.remote_reply,
        at=f.at_ms,
        next_attempt_at=f.next_attempt_ms,
        ndr_copy_id=f.ndr_copy_id,
        delivered_to_host=f.delivered_to_host,
    )
