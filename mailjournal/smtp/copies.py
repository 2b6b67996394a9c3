"""A JournalCopy on the tiered consumer, for the stages that send copies by SMTP (delivery and
the relay): their settings, admitting a copy, the records an attempt produces, and its counters.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailjournal.config import DeliveryConfig
from mailjournal.consumer.dead_letter import dead_letter
from mailjournal.consumer.handler import Poison, Production, Record, Settings, Take
from mailjournal.consumer.retry import RetryTiers
from mailjournal.metrics import children
from mailjournal.smtp import metrics
from mailjournal.smtp.outcomes import OutcomeFields, make_outcome
from schemas import DELIVERY_OUTCOME, JOURNAL_COPY, SchemaError, decode, encode
from schemas.events import to_millis

_OUTCOMES = children(metrics.OUTCOMES)

# a first attempt this far in the future is no clock skew between hosts but a broken record
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000


def consumer_settings(
    cfg: DeliveryConfig, *, group: str, topic: str, tier_topics: Sequence[str]
) -> Settings:
    """The tiered consumer's settings of a stage sending with ``cfg``."""
    return Settings(
        group=group,
        topic=topic,
        tiers=RetryTiers(tuple(tier_topics), tuple(cfg.retry_delays_seconds), cfg.retry_jitter),
        concurrency=cfg.concurrency,
        max_inflight=cfg.max_inflight,
        max_inflight_bytes=cfg.max_inflight_bytes,
        # worst case for one attempt and its NDR or DSN: connect plus a few commands, twice
        drain_seconds=2 * (cfg.connect_timeout_seconds + 4 * cfg.command_timeout_seconds) + 30,
    )


def copy_problem(
    copy: Mapping[str, Any], kinds: Collection[str], stage: str, now_ms: int
) -> str | None:
    """Why ``copy`` is poison for ``stage``, which sends ``kinds`` (no writer of ours produces
    it), or None.

    Such a copy is dead-lettered, not sent: a kind of another stage would go to the wrong place
    (a RELAY copy through the journal smart host), a negative attempt count or a first attempt in
    the future would never expire. ``dlq replay`` resets the attempt fields."""
    kind = str(copy.get("kind") or "JOURNAL")
    if kind not in kinds:
        return f"kind {kind} is not for the {stage} stage (it sends {'/'.join(kinds)})"
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


def admit_copy(record: Record, kinds: Collection[str], stage: str, now_ms: int) -> Take | Poison:
    """A JournalCopy to send (due at its ``not_before``), or poison."""
    try:
        # the original stays a view of the record: these stages only put it on the wire
        copy = decode(record.value, JOURNAL_COPY, tail_view=True)
    except SchemaError as exc:
        return Poison(f"undecodable JournalCopy: {exc}", "undecodable")
    problem = copy_problem(copy, kinds, stage, now_ms)
    if problem is not None:
        return Poison(f"invalid JournalCopy: {problem}", "invalid_copy", copy)
    return Take(copy, to_millis(copy["not_before"]))


def copy_production(topic: str, copy: Mapping[str, Any], what: str) -> Production:
    """``copy`` as a JournalCopy record on ``topic`` (a retry tier), keyed by its copy id."""
    return Production(topic, str(copy["copy_id"]), encode(JOURNAL_COPY, copy), what)


def outcome(topic: str, copy: Mapping[str, Any], fields: OutcomeFields) -> Production:
    """The DeliveryOutcome of an attempt of ``copy`` on the outcomes ``topic``."""
    record = make_outcome(copy, fields)
    _OUTCOMES(str(record["kind"]).lower(), fields.status.lower()).inc()
    return Production(
        topic, str(copy["copy_id"]), encode(DELIVERY_OUTCOME, record), f"outcome {fields.status}"
    )


def given_up(
    topic: str,
    record: Record,
    copy: Mapping[str, Any],
    reason: str,
    reason_class: str,
    *,
    source_topic: str | None = None,
) -> Production:
    """A dead letter keeping ``copy`` as it stands after its last attempt (consumed as
    ``record``), for a person: nobody can be told it failed."""
    return dead_letter(
        topic,
        record,
        reason,
        reason_class,
        value=encode(JOURNAL_COPY, copy),
        about=copy,
        source_topic=source_topic,
    )


@dataclass
class SendStats:
    """Counters for tests and benchmarks (Prometheus has the real ones); the sending threads
    count concurrently."""

    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    ndrs: int = 0  # NDRs and sender DSNs
    deferred: int = 0  # not attempted: the route was full (delivery.routes)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
