"""``mailjournal receipts --config FILE``: run the receipt writer (one per deployment).

Exit status: 0 after SIGTERM/SIGINT, 1 on a fatal Kafka error (fenced by a newer writer, a
transaction that could not be completed) so the supervisor restarts it from the committed
state, 2 on an invalid configuration or key file.
"""

from __future__ import annotations

import argparse
import sys

from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG
from mailjournal.logs import setup_logging


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, "-c")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="override metrics.evidence_port (0: off)"
    )


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, stages=("receipts",))
    if config is None:
        return EXIT_CONFIG
    if not config.evidence.enabled:
        print(f"{args.config}: evidence.enabled is false: no receipts to write", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging, stage="receipts")

    from evidence.keys import KeyFileError
    from evidence.writer import ReceiptWriter
    from mailjournal.consumer.stage import run_until_stopped

    try:
        writer = ReceiptWriter(config)
    except KeyFileError as exc:
        print(f"evidence: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    port = config.metrics.evidence_port if args.metrics_port is None else args.metrics_port
    return run_until_stopped(
        writer, name="receipt writer", ready=writer.ready, host=config.metrics.host, port=port
    )
