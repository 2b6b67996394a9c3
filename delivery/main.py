"""``mailjournal deliver --config FILE``: run the delivery stage until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from confluent_kafka import KafkaException

from delivery.retry import tier_topics
from delivery.worker import DeliveryWorker
from mailjournal.config import Config, ConfigError, load_config
from mailjournal.kafka import make_admin
from mailjournal.logs import setup_logging
from mailjournal.metrics import READY, serve_metrics

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2


def configure_parser(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("MAILJOURNAL_CONFIG")
    parser.add_argument(
        "--config",
        default=default,
        required=default is None,
        help="configuration file (default $MAILJOURNAL_CONFIG)",
    )


def missing_topics(config: Config, timeout: float = 30.0) -> list[str]:
    """Topics delivery reads or writes that do not exist (``mailjournal topics ensure``)."""
    topics = config.kafka.topics
    wanted = [
        topics.journal.name,
        *tier_topics(config),
        topics.outcomes.name,
        topics.dead_letters.name,
    ]
    existing = make_admin(config, role="delivery-admin").list_topics(timeout=timeout).topics
    return [t for t in wanted if t not in existing]


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration is invalid", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging, stage="delivery")
    try:
        missing = missing_topics(config)
    except KafkaException as exc:
        log.error("delivery: Kafka at %s: %s", config.kafka.bootstrap_servers, exc)
        return EXIT_FATAL
    if missing:
        log.error(
            "delivery: missing topics %s; create them with `mailjournal topics ensure`",
            ", ".join(missing),
        )
        return EXIT_CONFIG
    worker = DeliveryWorker(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("delivery: %s received, stopping", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_metrics(
        config.metrics.host, config.metrics.delivery_port, ready=lambda: worker.ready
    )
    READY.set(1)
    try:
        return worker.run()
    finally:
        READY.set(0)
        if server is not None:
            server.stop()
