"""``mailjournal config check FILE``: print the effective configuration or the errors (exit 0/2)."""

from __future__ import annotations

import argparse
import json
import sys

from mailjournal.config import load_config_or_report, masked_dump
from mailjournal.exits import EXIT_CONFIG, EXIT_OK


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate FILE and print the effective configuration")
    check.add_argument("file")
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.file)
    if config is None:
        return EXIT_CONFIG
    if not args.quiet:
        print(json.dumps(masked_dump(config), indent=2, sort_keys=False))
    print(f"{args.file}: configuration is valid", file=sys.stderr)
    return EXIT_OK
