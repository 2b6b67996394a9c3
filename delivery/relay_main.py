"""``mailjournal relay --config FILE``: run the relay stage (inline mode) until SIGTERM.

The delivery worker in ``relay`` mode: its own consumer group on the messages topic, originals
of listeners with ``relay = true`` to their next hops, DSNs to their senders."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from confluent_kafka import KafkaException

from delivery.main import EXIT_CONFIG, EXIT_FATAL, configure_parser
from delivery.relay import relay_tier_topics
from delivery.worker import DeliveryWorker
from mailjournal.config import Config, ConfigError, load_config
from mailjournal.kafka import make_admin
from mailjournal.logs import setup_logging
from mailjournal.metrics import READY, serve_metrics

log = logging.getLogger(__name__)

__all__ = ["configure_parser", "main", "missing_topics"]


def missing_topics(config: Config, timeout: float = 30.0) -> list[str]:
    topics = config.kafka.topics
    wanted = [
        topics.messages.name,
        *relay_tier_topics(config),
        topics.outcomes.name,
        topics.dead_letters.name,
    ]
    existing = make_admin(config, role="relay-admin").list_topics(timeout=timeout).topics
    return [t for t in wanted if t not in existing]


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration is invalid", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging, stage="relay")
    if not config.relays:
        log.error("relay: no listener has relay = true; nothing to relay")
        return EXIT_CONFIG
    try:
        missing = missing_topics(config)
    except KafkaException as exc:
        log.error("relay: Kafka at %s: %s", config.kafka.bootstrap_servers, exc)
        return EXIT_FATAL
    if missing:
        log.error(
            "relay: missing topics %s; create them with `mailjournal topics ensure`",
            ", ".join(missing),
        )
        return EXIT_CONFIG
    worker = DeliveryWorker(config, mode="relay")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("relay: %s received, stopping", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_metrics(
        config.metrics.host, config.metrics.relay_port, ready=lambda: worker.ready
    )
    READY.set(1)
    try:
        return worker.run()
    finally:
        READY.set(0)
        if server is not None:
            server.stop()
