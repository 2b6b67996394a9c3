"""``mailjournal deliver --config FILE``: run the delivery stage until SIGTERM.

Exit status: 0 after SIGTERM/SIGINT (the work in flight finished and committed first), 1 on a
fatal Kafka error so the supervisor restarts it, 2 on an invalid configuration or missing topics.
"""

from __future__ import annotations

import argparse
import logging
import os

from confluent_kafka import KafkaException

from delivery.handler import DeliveryHandler
from delivery.retry import tier_topics
from mailjournal.config import load_config_or_report
from mailjournal.consumer.loop import TieredConsumer
from mailjournal.consumer.stage import missing_topics, run_until_stopped
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL
from mailjournal.logs import setup_logging

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("MAILJOURNAL_CONFIG")
    parser.add_argument(
        "--config",
        default=default,
        required=default is None,
        help="configuration file (default $MAILJOURNAL_CONFIG)",
    )


def main(args: argparse.Namespace) -> int:
    """Journal copies and their NDRs to the smart host until SIGTERM/SIGINT."""
    config = load_config_or_report(args.config, stages=("deliver",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="delivery")
    topics = config.kafka.topics
    wanted = [
        topics.journal.name,
        *tier_topics(config),
        topics.outcomes.name,
        topics.dead_letters.name,
    ]
    try:
        missing = missing_topics(config, wanted, role="delivery-admin")
    except KafkaException as exc:
        log.error("delivery: Kafka at %s: %s", config.kafka.bootstrap_servers, exc)
        return EXIT_FATAL
    if missing:
        log.error(
            "delivery: missing topics %s; create them with `mailjournal topics ensure`",
            ", ".join(missing),
        )
        return EXIT_CONFIG
    worker = TieredConsumer(config, DeliveryHandler(config))
    return run_until_stopped(worker, host=config.metrics.host, port=config.metrics.delivery_port)
