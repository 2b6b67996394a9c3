"""``mailjournal deliver --config FILE``: run the delivery stage until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from types import FrameType

from confluent_kafka import KafkaException

from delivery.retry import tier_topics
from delivery.worker import DeliveryWorker
from mailjournal.config import Config, load_config_or_report
from mailjournal.kafka import make_admin
from mailjournal.logs import setup_logging
from mailjournal.metrics import serve_metrics
from relay.routing import relay_tier_topics

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


def missing_topics(config: Config, mode: str = "journal", timeout: float = 30.0) -> list[str]:
    """Topics the worker in ``mode`` reads or writes that do not exist (``topics ensure``)."""
    topics = config.kafka.topics
    if mode == "relay":
        wanted = [topics.messages.name, *relay_tier_topics(config)]
    else:
        wanted = [topics.journal.name, *tier_topics(config)]
    wanted += [topics.outcomes.name, topics.dead_letters.name]
    existing = make_admin(config, role=f"{mode}-admin").list_topics(timeout=timeout).topics
    return [t for t in wanted if t not in existing]


def run(args: argparse.Namespace, mode: str) -> int:
    """Run the delivery worker in ``mode`` ("journal": journal copies and NDRs; "relay":
    originals to their next hops) until SIGTERM/SIGINT."""
    stage = "delivery" if mode == "journal" else "relay"
    config = load_config_or_report(
        args.config, stages=("deliver" if mode == "journal" else "relay",)
    )
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage=stage)
    if mode == "relay" and not config.relays:
        log.error("relay: no listener has relay = true; nothing to relay")
        return EXIT_CONFIG
    try:
        missing = missing_topics(config, mode)
    except KafkaException as exc:
        log.error("%s: Kafka at %s: %s", stage, config.kafka.bootstrap_servers, exc)
        return EXIT_FATAL
    if missing:
        log.error(
            "%s: missing topics %s; create them with `mailjournal topics ensure`",
            stage,
            ", ".join(missing),
        )
        return EXIT_CONFIG
    worker = DeliveryWorker(config, mode=mode)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: %s received, stopping", stage, signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = config.metrics.relay_port if mode == "relay" else config.metrics.delivery_port
    server = serve_metrics(config.metrics.host, port, ready=lambda: worker.ready)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.stop()


def main(args: argparse.Namespace) -> int:
    return run(args, "journal")
