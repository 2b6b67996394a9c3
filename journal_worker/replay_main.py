"""``mailjournal replay --config FILE --since T --until T [--direction D] [--to ADDRESS]
[--dry-run] [--run-id ID]``: re-journal a past window (:mod:`journal_worker.replay`).

Prints the run report. Exit status: 0 when the window was replayed (or was already), 1 on a
Kafka or directory failure (run the same command again: it resumes), 2 on unusable arguments or
configuration, or a window that starts before the messages topic's retention.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from mailjournal.addresses import AddressError, validate_mailbox
from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK
from mailjournal.logs import setup_logging
from mailjournal.times import parse_time

log = logging.getLogger("mailjournal.replay")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--since", required=True, help="window start: ISO 8601, or an age (2h)")
    parser.add_argument("--until", required=True, help="window end (exclusive): ISO 8601 or age")
    parser.add_argument(
        "--direction", choices=("inbound", "outbound", "internal"), help="only this direction"
    )
    parser.add_argument("--to", help="send every owed copy to this address instead of the policy's")
    parser.add_argument("--dry-run", action="store_true", help="report what is owed, send nothing")
    parser.add_argument(
        "--run-id",
        help="name of the run (default: derived from the arguments, so the same command resumes)",
    )


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, stages=("journal",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="replay")
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as exc:
        print(f"--since/--until: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    assert since is not None and until is not None
    if until <= since:
        print("--until must be after --since", file=sys.stderr)
        return EXIT_CONFIG
    to = None
    if args.to:
        try:
            to = validate_mailbox(args.to)
        except AddressError as exc:
            print(f"--to: {exc}", file=sys.stderr)
            return EXIT_CONFIG

    from confluent_kafka import KafkaException

    from journal_worker.replay import ReplayRequest, ReplayWorker, RetentionRefused
    from journal_worker.worker import FatalError

    request = ReplayRequest(since, until, args.direction, to, args.dry_run, args.run_id)
    worker = ReplayWorker(config, request)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch and stopping", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        report = worker.replay()
    except RetentionRefused as exc:
        print(f"replay refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (FatalError, KafkaException) as exc:
        print(
            f"replay {request.run} failed: {exc}; run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_FATAL
    print(report.render())
    return EXIT_OK if report.complete else EXIT_FATAL
