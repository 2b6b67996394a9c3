"""Delivery's retry tiers: ``<topics.retry.name>.<i>`` waits ``delivery.retry_delays_seconds[i]``
(+/- ``delivery.retry_jitter``), the topics ``mailjournal topics ensure`` creates. Copies expire
``delivery.expiry_seconds`` after their first attempt. The mechanism (a tier's head paused until
due, attempt ``n`` re-queued to tier ``min(n, tiers - 1)``) is :mod:`mailjournal.consumer.retry`.
"""

from __future__ import annotations

from mailjournal.config import Config
from mailjournal.topics import retry_topic_name


def tier_topics(config: Config) -> list[str]:
    return [retry_topic_name(config, i) for i in range(len(config.delivery.retry_delays_seconds))]
