"""``mailjournal config check FILE``: print the effective configuration or the errors (exit 0/2)."""

from __future__ import annotations

import argparse
import json
import sys

from mailjournal.config import ConfigError, load_config, masked_dump


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate FILE and print the effective configuration")
    check.add_argument("file")
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: configuration is invalid", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(json.dumps(masked_dump(config), indent=2, sort_keys=False))
    print(f"{args.file}: configuration is valid", file=sys.stderr)
    return 0
