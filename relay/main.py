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

from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.consumer.stage import serve
from mailjournal.exits import EXIT_CONFIG
from mailjournal.logs import setup_logging
from relay.handler import RelayHandler

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Originals to their next hops until SIGTERM/SIGINT."""
    config = load_config_or_report(args.config, stages=("relay",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="relay")
    if not config.relays:
        log.error("relay: no listener has relay = true; nothing to relay")
        return EXIT_CONFIG
    return serve(config, RelayHandler(config), port=config.metrics.relay_port)
