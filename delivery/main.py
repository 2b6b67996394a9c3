"""``mailjournal deliver --config FILE``: run the delivery stage until SIGTERM.

Exit status: 0 after SIGTERM/SIGINT (the work in flight finished and committed first), 1 on a
fatal Kafka error so the supervisor restarts it, 2 on an invalid configuration or missing topics.
"""

from __future__ import annotations

import argparse

from delivery.handler import DeliveryHandler
from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.consumer.stage import serve
from mailjournal.exits import EXIT_CONFIG
from mailjournal.logs import setup_logging


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Journal copies and their NDRs to the smart host until SIGTERM/SIGINT."""
    config = load_config_or_report(args.config, stages=("deliver",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="delivery")
    return serve(config, DeliveryHandler(config), port=config.metrics.delivery_port)
