"""Dead letters: a record kept, with the reason, for a person (``mailjournal dlq``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailjournal.consumer import metrics
from mailjournal.consumer.handler import Production, Record
from schemas import DEAD_LETTER, encode, records


def dead_letter(
    topic: str,
    record: Record,
    reason: str,
    reason_class: str,
    *,
    value: bytes,
    about: Mapping[str, Any] | None = None,
    source_topic: str | None = None,
) -> Production:
    """A DeadLetter on ``topic`` for ``record``: ``value`` is what it keeps (the raw record, or
    the record as it stands after the last attempt), ``about`` the decoded record whose
    ``copy_id``/``event_id`` it names; ``source_topic`` where ``dlq replay`` puts it back
    (default: where it came from)."""
    metrics.DEAD_LETTERS.labels(reason_class).inc()
    letter = records.dead_letter(
        reason=reason,
        source_topic=source_topic or record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=value,
        headers=record.headers,
        copy_id=about.get("copy_id") if about is not None else None,
        event_id=about.get("event_id") if about is not None else None,
    )
    key = str(letter["copy_id"] or letter["id"])
    return Production(topic, key, encode(DEAD_LETTER, letter), "dead letter")
