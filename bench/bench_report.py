"""Cost of building what delivery sends for one copy (not a test): the journal report around an
original of 1 KB, 100 KB and 1 MB, the SMTP line-ending check and the dot-stuffing -- as one
joined buffer rescanned by each step (how delivery sent until the wire form), and as the parts
delivery now sends (``outgoing_message(...).payload()``: the original scanned once).

    .venv/bin/python bench/bench_report.py [repeats]
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SOURCE_LINE, thread_cpu_per_call
from delivery.report import build_message, outgoing_message
from mailjournal.config import Config
from mailjournal.smtp.wire import dot_stuffed, wire_bytes
from tests.fixtures.config import make_config
from tests.fixtures.delivery import make_copy

LINE = SOURCE_LINE


def copy_of(size: int) -> dict[str, Any]:
    head = b"Subject: bench\r\nFrom: a@ext.example\r\nTo: b@corp.example\r\n\r\n"
    return make_copy(original=head + LINE * max(1, (size - len(head)) // len(LINE)))


def payload_of(copy: dict[str, Any], config: Config) -> bytes:
    return outgoing_message(copy, config).payload()


def ms(fn: Callable[[], object], repeats: int) -> float:
    """CPU ms per call of this thread."""
    return thread_cpu_per_call(fn, repeats) * 1000


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    config = make_config({})
    print(
        f"{'original':>9} {'build ms':>9} {'wire ms':>8} {'stuff ms':>9} {'joined ms':>10}"
        f" {'parts ms':>9}"
    )
    for size in (1024, 102400, 1048576):
        copy = copy_of(size)
        message = build_message(copy, config)
        build = ms(functools.partial(build_message, copy, config), repeats)
        wire = ms(functools.partial(wire_bytes, message), repeats)
        stuff = ms(functools.partial(dot_stuffed, message), repeats)
        parts = ms(functools.partial(payload_of, copy, config), repeats)
        print(
            f"{size // 1024:>7}KB {build:>9.3f} {wire:>8.3f} {stuff:>9.3f}"
            f" {build + wire + stuff:>10.3f} {parts:>9.3f}"
        )


if __name__ == "__main__":
    main()
