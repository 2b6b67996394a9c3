"""``mailjournal receipts --config FILE``: run the receipt writer (one per deployment).

Exit status: 0 after SIGTERM/SIGINT, 1 on a fatal Kafka error (fenced by a newer writer, a
transaction that could not be completed) so the supervisor restarts it from the committed
state, 2 on an invalid configuration or key file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK
from mailjournal.logs import setup_logging

log = logging.getLogger("mailjournal.receipts")


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
    from evidence.writer import FatalError, ReceiptWriter
    from mailjournal.metrics import serve_metrics

    try:
        writer = ReceiptWriter(config)
    except KeyFileError as exc:
        print(f"evidence: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch and stopping", signum)
        writer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = config.metrics.evidence_port if args.metrics_port is None else args.metrics_port
    server = serve_metrics(config.metrics.host, port, writer.ready)
    try:
        writer.run()
    except FatalError as exc:
        log.error("fatal: %s; exiting so that a fresh instance takes over", exc)
        return EXIT_FATAL
    finally:
        if server is not None:
            server.stop()
    log.info("stopped")
    return EXIT_OK
