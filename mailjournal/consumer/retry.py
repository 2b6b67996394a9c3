"""Retry tiers and backoff (pure).

Temporary failures wait on retry topics, one per delay: tier ``i`` holds records that wait
``delays[i]`` (+/- jitter). Within one tier every record waits about the same time, so a
partition's head is (up to the jitter) always the next record due: the tiered consumer pauses a
partition whose head is not due and resumes it when it is, instead of holding waiting records in
memory or polling in a loop. Attempt ``n`` (0 = the first) that fails is re-queued to tier
``min(n, len(delays) - 1)``: exponential backoff for the first attempts, the last delay repeated
until the expiry.

Which topics and delays a stage has is its own policy (``delivery.retry``, ``relay.retry``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryTiers:
    """A stage's retry tiers: ``topics[i]`` holds the records that wait ``delays_seconds[i]``."""

    topics: tuple[str, ...]
    delays_seconds: tuple[float, ...]
    jitter: float

    def __post_init__(self) -> None:
        if len(self.topics) != len(self.delays_seconds):
            raise ValueError("one retry topic per delay")

    def topic(self, tier: int) -> str:
        return self.topics[tier]

    def longest_wait_ms(self) -> dict[str, int]:
        """The longest a head of each tier may wait: its delay with the largest jitter."""
        return {
            t: round(d * (1 + self.jitter) * 1000)
            for t, d in zip(self.topics, self.delays_seconds, strict=True)
        }


def tier_for_attempt(attempt: int, tiers: int) -> int:
    """Tier for re-queueing after attempt ``attempt`` (0-based) failed."""
    return max(0, min(attempt, tiers - 1))


def jittered_delay_ms(delay_seconds: float, jitter: float, rng: random.Random) -> int:
    """``delay * (1 +/- jitter)``, so records that failed together do not all retry at once."""
    factor = 1.0 + jitter * rng.uniform(-1.0, 1.0) if jitter else 1.0
    return max(0, round(delay_seconds * factor * 1000))


@dataclass(frozen=True)
class RetryPlan:
    tier: int
    not_before_ms: int


def plan_retry(
    attempt: int,
    now_ms: int,
    deadline_ms: int,
    delays: Sequence[float],
    jitter: float,
    rng: random.Random,
) -> RetryPlan:
    """Where and when the next attempt goes. The last attempt is made at the deadline, never
    after it: the record's wait is clamped to the expiry."""
    tier = tier_for_attempt(attempt, len(delays))
    not_before = now_ms + jittered_delay_ms(delays[tier], jitter, rng)
    return RetryPlan(tier, min(not_before, max(deadline_ms, now_ms)))


def deadline_ms(first_attempt_ms: int, expiry_seconds: float) -> int:
    """Expiry counts from the first attempt (in normal operation seconds after ingest accepted
    the message; after an outage of the stage, a record still gets its full window)."""
    return first_attempt_ms + round(expiry_seconds * 1000)
