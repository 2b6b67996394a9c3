"""``mailjournal relay --config FILE``: run the relay stage (inline mode) until SIGTERM.

The delivery worker in ``relay`` mode: its own consumer group on the messages topic, originals
of listeners with ``relay = true`` to their next hops, DSNs to their senders."""

from __future__ import annotations

import argparse

from delivery.main import configure_parser, run

__all__ = ["configure_parser", "main"]


def main(args: argparse.Namespace) -> int:
    return run(args, "relay")
