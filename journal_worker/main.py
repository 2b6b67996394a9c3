"""``mailjournal journal --config FILE``: run one journal worker.

Exit status: 0 after SIGTERM/SIGINT (the current batch is committed first), 1 on a fatal Kafka
error (fenced, or a transaction that could not be completed) so the supervisor restarts it,
2 on an invalid configuration, 70 when a transaction call hangs (:mod:`journal_worker.watchdog`).
"""

from __future__ import annotations

import argparse

from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG
from mailjournal.logs import setup_logging


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, "-c")
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


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, stages=("journal",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="journal")

    from journal_worker.watchdog import start_watchdog
    from journal_worker.worker import JournalWorker
    from mailjournal.consumer.stage import run_until_stopped

    worker = JournalWorker(config, instance_id=args.instance_id)
    start_watchdog(worker)
    port = config.metrics.journal_port if args.metrics_port is None else args.metrics_port
    return run_until_stopped(
        worker, name="journal worker", ready=worker.ready, host=config.metrics.host, port=port
    )
