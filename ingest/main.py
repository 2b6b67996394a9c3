"""``mailjournal ingest --config FILE [--workers N]`` and ``mailjournal ingest hash-password``.

Wiring only: one process serves (:mod:`ingest.process`), or with ``--workers N`` (N > 1) a parent
runs N of them on the same ports (:mod:`ingest.prefork`).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

from ingest.prefork import run_workers
from ingest.process import quiet_aiosmtpd, run_process
from mailjournal.config import add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_OK
from mailjournal.logs import setup_logging

log = logging.getLogger("ingest")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the listeners' ports via SO_REUSEPORT (default 1)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    hp = sub.add_parser(
        "hash-password",
        help="print a 'user:hash' line for a listener's credentials_file",
        description="print a 'user:hash' line (salted scrypt) for a listener's credentials_file",
    )
    hp.add_argument("--user", required=True)
    hp.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (one line)"
    )


def _hash_password(args: argparse.Namespace) -> int:
    from ingest.auth import hash_password

    if ":" in args.user:
        print("a user name cannot contain ':'", file=sys.stderr)
        return EXIT_CONFIG
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    if not password:
        print("empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.user}:{hash_password(password)}")
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "hash-password":
        return _hash_password(args)
    config = load_config_or_report(args.config, stages=("ingest",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="ingest")
    quiet_aiosmtpd(config)
    if not config.ingest.listeners:
        log.error("no [[ingest.listeners]] in %s", args.config)
        return EXIT_CONFIG
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers == 1:
        return run_process(config, serve_metrics_here=True)
    return run_workers(config, args.workers)
