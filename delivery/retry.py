"""Retry tiers and backoff (pure).

Temporary failures wait on retry topics, one per delay: ``<topics.retry.name>.<i>`` holds records
that wait ``retry_delays_seconds[i]`` (+/- jitter). Within one tier every record waits about the
same time, so a partition's head is (up to the jitter) always the next record due: the worker
pauses a partition whose head is not due and resumes it when it is, instead of holding waiting
records in memory or polling in a loop. Attempt ``n`` (0 = the first) that fails is re-queued to
tier ``min(n, len(delays) - 1)``: exponential backoff for the first attempts, the last delay
repeated until the expiry.

Expiry counts from the copy's first delivery attempt (in normal operation seconds after ingest
accepted the message; after an outage of the delivery stage, a copy still gets its full window).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mailjournal.config import Config
from mailjournal.topics import retry_topic_name


def tier_topic(config: Config, tier: int) -> str:
    return retry_topic_name(config, tier)  # the topic ``mailjournal topics ensure`` creates


def tier_topics(config: Config) -> list[str]:
    return [tier_topic(config, i) for i in range(len(config.delivery.retry_delays_seconds))]


def tier_for_attempt(attempt: int, tiers: int) -> int:
    """Tier for re-queueing after attempt ``attempt`` (0-based) failed."""
    return max(0, min(attempt, tiers - 1))


def jittered_delay_ms(delay_seconds: float, jitter: float, rng: random.Random) -> int:
    """``delay * (1 +/- jitter)``, so copies that failed together do not all retry at once."""
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
    return first_attempt_ms + round(expiry_seconds * 1000)
