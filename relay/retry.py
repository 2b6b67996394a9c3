"""The relay's retry policy: its own tiers (``<topics.relay_retry.name>.<i>`` waits
``relay.retry_delays_seconds[i]``), expiry (``relay.expiry_seconds``) and concurrency, with
delivery's SMTP settings (timeouts, jitter, reporting MTA) for the rest."""

from __future__ import annotations

from mailjournal.config import Config, DeliveryConfig
from mailjournal.topics import relay_retry_topic_name


def relay_delivery_config(config: Config) -> DeliveryConfig:
    """Delivery's settings with the relay's own concurrency, retry tiers and expiry: what the
    relay's SMTP clients, attempt decisions and tiered consumer run with."""
    r = config.relay
    return config.delivery.model_copy(
        update={
            "concurrency": r.concurrency,
            "max_inflight": r.max_inflight,
            "max_inflight_bytes": r.max_inflight_bytes,
            "retry_delays_seconds": list(r.retry_delays_seconds),
            "expiry_seconds": r.expiry_seconds,
        }
    )


def relay_tier_topics(config: Config) -> list[str]:
    return [
        relay_retry_topic_name(config, i) for i in range(len(config.relay.retry_delays_seconds))
    ]
