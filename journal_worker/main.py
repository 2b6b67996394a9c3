"""``mailjournal journal --config FILE``: run one journal worker.

Exit status: 0 after SIGTERM/SIGINT (the current batch is committed first), 1 on a fatal Kafka
error (fenced, or a transaction that could not be completed) so the supervisor restarts it,
2 on an invalid configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from mailjournal.config import load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_STUCK
from mailjournal.logs import setup_logging

if TYPE_CHECKING:
    from journal_worker.worker import JournalWorker

log = logging.getLogger("mailjournal.journal")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("MAILJOURNAL_CONFIG"),
        required="MAILJOURNAL_CONFIG" not in os.environ,
        help="configuration file (TOML); default $MAILJOURNAL_CONFIG",
    )
    parser.add_argument(
        "--instance-id",
        default=None,
        help="stable id of this replica, part of its Kafka transactional.id (a restarted "
        "replica with the same id fences its predecessor); default $MAILJOURNAL_INSTANCE_ID, "
        "else <host>-<pid>",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="override metrics.journal_port (0 disables the endpoint)",
    )


# every transactional call has a timeout; one that has not returned well after it is stuck
# inside librdkafka: exit (EXIT_STUCK), the supervisor (or Kubernetes) starts a fresh instance,
# and the transaction coordinator aborts the open transaction after transaction.timeout.ms
def start_watchdog(worker: JournalWorker) -> None:
    from journal_worker.worker import TXN_CALL_TIMEOUT_SECONDS

    limit = TXN_CALL_TIMEOUT_SECONDS + 30

    def watch() -> None:
        while True:
            time.sleep(5)
            stuck = worker.stuck_seconds()
            if stuck > limit:
                log.critical("a Kafka transaction call is stuck for %.0f s: exiting", stuck)
                logging.shutdown()
                os._exit(EXIT_STUCK)

    threading.Thread(target=watch, name="journal-watchdog", daemon=True).start()


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, stages=("journal",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="journal")

    from journal_worker.worker import FatalError, JournalWorker
    from mailjournal.metrics import serve_metrics

    worker = JournalWorker(config, instance_id=args.instance_id)
    start_watchdog(worker)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch and stopping", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = config.metrics.journal_port if args.metrics_port is None else args.metrics_port
    server = serve_metrics(config.metrics.host, port, worker.ready)
    try:
        worker.run()
    except FatalError as exc:
        log.error("fatal: %s; exiting so that a fresh instance takes over", exc)
        return EXIT_FATAL
    finally:
        if server is not None:
            server.stop()
    log.info("stopped")
    return EXIT_OK
