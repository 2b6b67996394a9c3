"""``mailjournal relay --config FILE``: run the relay stage (inline mode) until SIGTERM: its own
consumer group on the messages topic, originals of listeners with ``relay = true`` to their next
hops, DSNs to their senders.

Exit status: 0 after SIGTERM/SIGINT (the work in flight finished and committed first), 1 on a
fatal Kafka error so the supervisor restarts it, 2 on an invalid configuration, missing topics or
no inline listener.
"""

from __future__ import annotations

import argparse
import logging
import os

from confluent_kafka import KafkaException

from mailjournal.config import load_config_or_report
from mailjournal.consumer.loop import TieredConsumer
from mailjournal.consumer.stage import missing_topics, run_until_stopped
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL
from mailjournal.logs import setup_logging
from relay.handler import RelayHandler
from relay.retry import relay_tier_topics

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
    """Originals to their next hops until SIGTERM/SIGINT."""
    config = load_config_or_report(args.config, stages=("relay",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="relay")
    if not config.relays:
        log.error("relay: no listener has relay = true; nothing to relay")
        return EXIT_CONFIG
    topics = config.kafka.topics
    wanted = [
        topics.messages.name,
        *relay_tier_topics(config),
        topics.outcomes.name,
        topics.dead_letters.name,
    ]
    try:
        missing = missing_topics(config, wanted, role="relay-admin")
    except KafkaException as exc:
        log.error("relay: Kafka at %s: %s", config.kafka.bootstrap_servers, exc)
        return EXIT_FATAL
    if missing:
        log.error(
            "relay: missing topics %s; create them with `mailjournal topics ensure`",
            ", ".join(missing),
        )
        return EXIT_CONFIG
    worker = TieredConsumer(config, RelayHandler(config))
    return run_until_stopped(worker, host=config.metrics.host, port=config.metrics.relay_port)
