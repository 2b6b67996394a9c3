"""Each stage's own per-message work, step by step, through the real functions (not a test).

``make bench`` gives each stage's CPU per message and its floor (its Kafka part and its SMTP hop,
``bench_floor`` and ``bench_hops``); what is left is the stage's own code. This prints what the
steps of that code cost alone, in one thread, without I/O, for one message of smtp-source's
shape (the body ``make bench`` sends) of 1 KB, 100 KB and 1 MB:

- **ingest**: the DATA read (dot lines, facts), the digest, the selected header fields, the
  record, the trace fields and the second digest, the Avro encoding;
- **journal**: the decode of the message, the decision, the copy's record and its encoding;
- **delivery**: the decode of the copy, the journal report (its header section, summary part and
  stamp), the parts put on the wire, the outcome's record and encoding;
- **relay**: the decode of the message, its relay copy, the parts put on the wire, the outcome.

What a stage costs in ``make bench`` beyond its floor and the sum of these steps is the glue
between them: the event loop or the sending threads, the Kafka client's calls, the SMTP client's
parsing of replies, the metrics.

    .venv/bin/python -m bench.bench_stage_work [--repeats N] [--sizes 1024,102400,1048576]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RECIPIENT, SENDER, SOURCE_LINE, thread_cpu_per_call
from delivery.report import outgoing_message
from ingest.datapath import DataParser, DataStatus
from ingest.headers import selected_headers
from journal_worker.decide import Decider, journal_copy_record
from mailjournal.config import Config
from mailjournal.smtp.outcomes import OutcomeFields, make_outcome
from mailjournal.smtp.wire import BodyFacts, Outgoing, dot_stuffed
from mailjournal.trace import traced
from relay.routing import relay_copies
from schemas import (
    DELIVERY_OUTCOME,
    JOURNAL_COPY,
    MESSAGE_RECEIVED,
    codec,
    new_event_id,
    now_millis,
)
from schemas.records import client_info, mail_params, message_received, recipient
from tests.fixtures.config import make_config

CHUNK = 64 * 1024  # ingest's reads
Step = tuple[str, Callable[[], object]]


def smtp_source_message(size: int) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nDate: Mon, 7 Dec 2026 15:00:00 +0000\r\n"
        "Message-Id: <20261207150000.1@bench.example.org>\r\n\r\n"
    ).encode()
    return head + SOURCE_LINE * max(1, (size - len(head)) // len(SOURCE_LINE))


def ingest_steps(message: bytes, config: Config) -> tuple[list[Step], bytes]:
    """ingest's steps after the commands, as ``IngestSession._store`` runs them; and the
    MessageReceived they make."""
    wire = dot_stuffed(message) + b".\r\n"
    chunks = [wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]

    def read() -> DataParser:
        parser = DataParser(max_size=50 * 1024 * 1024)
        for chunk in chunks:
            parser.feed(chunk)
        assert parser.status is DataStatus.OK and parser.message is not None
        return parser

    parser = read()
    raw = parser.message
    assert raw is not None

    headers = selected_headers(raw)
    digest = hashlib.sha256(raw).hexdigest()
    facts = parser.facts()

    def event() -> dict[str, Any]:
        return dict(
            message_received(
                event_id=new_event_id(),
                received_at=now_millis(),
                ingest_host="ingest-0",
                listener="mx",
                listener_role="internet",
                client=client_info("127.0.0.1", 40000, "localhost", None),
                tls=None,
                auth_user=None,
                mail_from=SENDER,
                mail_params=mail_params(),
                recipients=[recipient(RECIPIENT)],
                headers=headers,
                sha256=digest,
                raw=raw,
                body_facts=facts.record(),
            )
        )

    built = event()
    record = traced(built, config.ingest.hostname)
    steps: list[Step] = [
        ("DATA read (native scan, facts)", read),
        ("sha256 of the message", lambda: hashlib.sha256(raw).hexdigest()),
        ("selected header fields", lambda: selected_headers(raw)),
        ("record (event id, client, envelope, facts)", event),
        ("trace fields + received_sha256", lambda: traced(built, config.ingest.hostname)),
        ("Avro encode MessageReceived", lambda: codec.encode(MESSAGE_RECEIVED, record)),
    ]
    return steps, codec.encode(MESSAGE_RECEIVED, record)


def journal_steps(value: bytes, config: Config) -> tuple[list[Step], bytes]:
    decider = Decider(config, config.journal.stamp_key())
    event = codec.decode(value, MESSAGE_RECEIVED, tail_view=True)
    plan = decider.plan(event)
    assert not plan.lookups, "the bench's config journals without a directory"
    decision = decider.decide(plan, {})
    (copy,) = decision.copies
    record = journal_copy_record(event, copy)
    steps: list[Step] = [
        (
            "Avro decode MessageReceived (view)",
            lambda: codec.decode(value, MESSAGE_RECEIVED, tail_view=True),
        ),
        ("decision (plan + decide)", lambda: decider.decide(decider.plan(event), {})),
        ("copy record", lambda: journal_copy_record(event, copy)),
        ("Avro encode JournalCopy (spliced)", lambda: codec.encode(JOURNAL_COPY, record)),
    ]
    return steps, codec.encode(JOURNAL_COPY, record)


def outcome_steps(copy: dict[str, Any]) -> list[Step]:
    fields = OutcomeFields("DELIVERED", 1, "250 2.0.0 Ok: queued", now_millis(), None, None, "sink")
    outcome = make_outcome(copy, fields)
    return [
        ("outcome record", lambda: make_outcome(copy, fields)),
        ("Avro encode DeliveryOutcome", lambda: codec.encode(DELIVERY_OUTCOME, outcome)),
    ]


def delivery_steps(value: bytes, config: Config) -> list[Step]:
    key = config.journal.stamp_key()
    copy = codec.decode(value, JOURNAL_COPY, tail_view=True)
    message = outgoing_message(copy, config, key)
    return [
        (
            "Avro decode JournalCopy (view)",
            lambda: codec.decode(value, JOURNAL_COPY, tail_view=True),
        ),
        ("journal report (header, summary, stamp)", lambda: outgoing_message(copy, config, key)),
        ("wire parts (dot lines, SIZE, 8-bit)", message.payload_parts),
        *outcome_steps(copy),
    ]


def relay_steps(value: bytes, config: Config) -> list[Step]:
    event = codec.decode(value, MESSAGE_RECEIVED, tail_view=True)
    (copy,) = relay_copies(event, config)

    def parts() -> object:
        facts = BodyFacts.from_record(copy.get("body_facts"))
        return Outgoing.of(copy["original"], facts).payload_parts()

    return [
        (
            "Avro decode MessageReceived (view)",
            lambda: codec.decode(value, MESSAGE_RECEIVED, tail_view=True),
        ),
        ("relay copy (routing, envelope)", lambda: relay_copies(event, config)),
        ("wire parts (dot lines, SIZE, 8-bit)", parts),
        *outcome_steps(copy),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_stage_work", description=__doc__)
    ap.add_argument("--repeats", type=int, default=0, help="calls per step (default: by size)")
    ap.add_argument("--sizes", default="1024,102400,1048576")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    hop = {"host": "127.0.0.1", "port": 25}
    config = make_config({"relay": {"inbound": hop, "outbound": hop}})
    table: dict[tuple[str, str], dict[int, float]] = {}
    for size in sizes:
        repeats = args.repeats or max(20, 2_000_000 // max(size, 1024))
        steps_of, mr = ingest_steps(smtp_source_message(size), config)
        jsteps, jc = journal_steps(mr, config)
        stages = {
            "ingest": steps_of,
            "journal": jsteps,
            "delivery": delivery_steps(jc, config),
            "relay": relay_steps(mr, config),
        }
        for stage, steps in stages.items():
            for label, fn in steps:
                table.setdefault((stage, label), {})[size] = thread_cpu_per_call(fn, repeats) * 1e6
    heads = " | ".join(f"{s // 1024} KB" if s < 1048576 else f"{s // 1048576} MB" for s in sizes)
    print(f"| stage | step | {heads} |")
    print("|---|---|" + "---|" * len(sizes))
    for stage in ("ingest", "journal", "delivery", "relay"):
        rows = [(label, v) for (st, label), v in table.items() if st == stage]
        for label, v in rows:
            print(f"| {stage} | {label} | " + " | ".join(f"{v[s]:.1f}" for s in sizes) + " |")
        total = " | ".join(f"**{sum(v[s] for _, v in rows):.1f}**" for s in sizes)
        print(f"| {stage} | **all steps, µs per message** | {total} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
