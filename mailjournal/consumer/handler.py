"""What a stage implements to run on the tiered consumer (:mod:`mailjournal.consumer.loop`).

A handler says which topics it consumes (:class:`Settings`), makes of each fetched record work,
nothing or poison (:meth:`Handler.admit`), turns work into the records that follow from it
(:meth:`Handler.process`: outcomes, retries, NDRs, DSNs, dead letters -- all produced, and
acknowledged, before the offset is committed) and releases what it holds (:meth:`Handler.close`).
Fetching, pausing, backpressure, commits, rebalances and dead-lettering poison are the
mechanism's, the same for every stage (Mailman's runners implement only ``_dispose``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from mailjournal.consumer.retry import RetryTiers


class Source(StrEnum):
    """Where a record came from: the stage's input topic or one of its retry tiers. The values
    are the ``source`` label of ``mailjournal_delivery_inflight`` ("journal" from the days when
    delivery, reading the journal topic, was the only stage on the mechanism)."""

    INPUT = "journal"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record, as the handler sees it."""

    source: Source
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Production:
    """A record to produce; the consumed record is final once Kafka acknowledged all of them."""

    topic: str
    key: str
    value: bytes
    what: str  # for logs


@dataclass(frozen=True, slots=True)
class Take:
    """Work: ``value`` (the decoded record) goes to :meth:`Handler.process`. A retry-tier record
    is not taken before ``due_ms`` (the mechanism holds its partition until then)."""

    value: dict[str, Any]
    due_ms: int = 0


@dataclass(frozen=True, slots=True)
class Poison:
    """A record no writer of ours produces: dead-lettered as it came, with ``reason``, and the
    partition moves on. ``value``: what did decode (its ids go into the dead letter)."""

    reason: str
    reason_class: str  # the ``reason`` label of the dead-letter counter
    value: dict[str, Any] | None = None


Admission = Take | Poison | None
"""None: the record needs no work (final at once)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the mechanism needs to know of a stage."""

    group: str  # the consumer group
    topic: str  # the input topic
    tiers: RetryTiers
    concurrency: int  # worker threads (each with its own reused SMTP session)
    max_inflight: int  # records taken and not yet committed: what a crash would hand over again
    drain_seconds: float  # the longest one record may take, waited for at a revocation and a stop
    # bytes of records taken and not finished: what bounds memory when records are large
    max_inflight_bytes: int = 64 * 1024 * 1024


class Handler(Protocol):
    """One stage's work on the tiered consumer. ``admit`` runs on the consumer's thread and must
    not block; ``process`` runs on the worker threads, ``concurrency`` at a time."""

    @property
    def name(self) -> str:
        """The stage ("delivery", "relay"): log prefix and the Kafka clients' role."""
        ...

    @property
    def settings(self) -> Settings: ...

    @property
    def destination(self) -> str:
        """Where it sends (for the start log line)."""
        ...

    def admit(self, record: Record, now_ms: int) -> Admission: ...

    def process(self, record: Record, value: dict[str, Any]) -> list[Production]:
        """What follows from ``value`` (taken from ``record``). An exception dead-letters the
        record as it came (a record this code cannot handle must not stop the stage)."""
        ...

    def close(self) -> None: ...
