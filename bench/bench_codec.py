"""Encode/decode rates of the event codec (not a test): MessageReceived with 1 KB and 1 MB raw, and
the decode of a JournalCopy of a 100 KB original, copied (``decode``) and as delivery and the relay
admit it (``view``: the original a memoryview of the record, ``tail_view``).

.venv/bin/python bench/bench_codec.py [seconds-per-case]
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import codec, events
from tests.fixtures.delivery import make_copy


def message(raw: bytes) -> dict[str, Any]:
    return {
        "event_id": events.new_event_id(),
        "received_at": datetime.now(UTC),
        "ingest_host": "ingest-0",
        "listener": "mx",
        "listener_role": "internet",
        "client": {"ip": "192.0.2.7", "port": 40000, "helo": "mx.example", "proxied_by": None},
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
        "auth_user": None,
        "mail_from": "sender@extern.example",
        "mail_params": {
            "size": len(raw),
            "body": "8BITMIME",
            "smtputf8": False,
            "ret": None,
            "envid": None,
            "other": {},
        },
        "recipients": [
            {"address": f"user{i}@corp.example", "notify": None, "orcpt": None, "other": {}}
            for i in range(3)
        ],
        "headers": {
            "message_id": "<x@extern.example>",
            "subject": "Quarterly report",
            "from_": "Sender <sender@extern.example>",
            "to": "user0@corp.example",
            "cc": "user1@corp.example",
            "date": "Fri, 14 Mar 2025 15:09:26 +0000",
            "auto_submitted": None,
            "journal_stamp": None,
            "ms_journal_report": None,
        },
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "raw": raw,
    }


def rate(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(10):
            fn()
        n += 10
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"{'case':<28}{'ops/s':>12}{'MB/s':>10}")
    for label, size in (("1 KB", 1024), ("1 MB", 1024 * 1024)):
        record = message(b"x" * size)
        data = codec.encode(events.MESSAGE_RECEIVED, record)

        def enc(r: dict[str, Any] = record) -> bytes:
            return codec.encode(events.MESSAGE_RECEIVED, r)

        def dec(d: bytes = data) -> dict[str, Any]:
            return codec.decode(d, expected=events.MESSAGE_RECEIVED)

        cases: list[tuple[str, Callable[[], object]]] = [("encode", enc), ("decode", dec)]
        for op, fn in cases:
            r = rate(fn, seconds)
            print(f"{op + ' MessageReceived ' + label:<28}{r:>12,.0f}{r * len(data) / 1e6:>10,.0f}")
    copy = codec.encode(events.JOURNAL_COPY, make_copy(original=b"x" * 102_400))

    def dec_copy(d: bytes = copy) -> dict[str, Any]:
        return codec.decode(d, expected=events.JOURNAL_COPY)

    def view_copy(d: bytes = copy) -> dict[str, Any]:
        return codec.decode(d, expected=events.JOURNAL_COPY, tail_view=True)

    for op, fn in (("decode", dec_copy), ("view", view_copy)):
        r = rate(fn, seconds)
        print(f"{op + ' JournalCopy 100 KB':<28}{r:>12,.0f}{r * len(copy) / 1e6:>10,.0f}")
    r = rate(events.new_event_id, seconds)
    print(f"{'new_event_id':<28}{r:>12,.0f}")


if __name__ == "__main__":
    main()
