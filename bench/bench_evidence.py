"""Cost of the signed journal receipts per message (not a test): CPU and bytes.

The receipt writer's work for one message with one journal copy, without Kafka: decoding the
three input records (MessageReceived with a 4 KB body, JournalCopy, DeliveryOutcome), the join,
the receipt body, sealing (hash link and Ed25519 signature), Avro encoding, and the changelog
writes (the pending entry and the done marker); then what verification costs per receipt.

.venv/bin/python -m bench.bench_evidence [messages]
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

from evidence.chain import Chains
from evidence.keys import Keyring, SigningKey
from evidence.state import Join, receipt_partition
from evidence.verify import verify_chains
from schemas import codec, events, records


def inputs(i: int, raw: bytes) -> tuple[bytes, bytes, bytes]:
    event_id = events.new_event_id()
    msg = records.message_received(
        event_id=event_id,
        received_at=events.now_millis(),
        ingest_host="ingest-0",
        listener="mx",
        listener_role="INTERNET",
        client=records.client_info("192.0.2.7", 40000, "mx.extern.example"),
        tls=None,
        auth_user=None,
        mail_from="sender@extern.example",
        mail_params=records.mail_params(),
        recipients=[records.recipient(f"user{i}@corp.example")],
        headers={
            "message_id": None,
            "subject": None,
            "from_": None,
            "to": None,
            "cc": None,
            "date": None,
            "auto_submitted": None,
            "journal_stamp": None,
            "ms_journal_report": None,
        },
        sha256=hashlib.sha256(raw).hexdigest(),
        raw=raw,
    )
    copy_id = events.make_copy_id(event_id, "journal@corp.example")
    copy = records.journal_copy(
        copy_id=copy_id,
        event_id=event_id,
        kind="JOURNAL",
        received_at=msg["received_at"],
        journal_address="journal@corp.example",
        ndr_address="ndr@corp.example",
        format="REPORT",
        original_sender="sender@extern.example",
        recipients=[],
        original=raw,
        directions=["INBOUND"],
        sources=["GLOBAL"],
        policy_digest="sha256:" + "ab" * 32,
    )
    outcome = records.delivery_outcome(
        copy_id=copy_id,
        event_id=event_id,
        kind="JOURNAL",
        status="DELIVERED",
        journal_address="journal@corp.example",
        ndr_address="ndr@corp.example",
        directions=["INBOUND"],
        attempts=1,
        remote_reply="250 2.0.0 Ok: queued as 4XyZ12",
        at=events.now_millis(),
        delivered_to_host="archive.corp.example:25",
    )
    return (
        codec.encode("MessageReceived", msg),
        codec.encode("JournalCopy", copy),
        codec.encode("DeliveryOutcome", outcome),
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    raw = b"Subject: x\r\n\r\n" + b"y" * 4096
    data = [inputs(i, raw) for i in range(n)]
    key = SigningKey.generate()
    chains = Chains(key, 6)
    join = Join(["10.0.0.0/8"])
    join.decided({0: 2**62})
    receipt_bytes = changelog_bytes = 0
    sealed: list[dict[str, Any]] = []
    start = time.process_time()
    for offset, (m, c, o) in enumerate(data):
        now = events.now_millis()
        join.add_message(codec.decode(m, "MessageReceived"), 0, offset, now)
        join.add_copy(codec.decode(c, "JournalCopy"), now)
        join.add_outcome(codec.decode(o, "DeliveryOutcome"), now)
        for event_id in join.ready():
            entry = join.entries[event_id]
            changelog_bytes += len(json.dumps(entry.to_json()).encode())  # the pending entry
            body = join.body(event_id, "sha256:" + "ab" * 32)
            receipt = chains.seal(body, receipt_partition(event_id, 6), now)
            receipt_bytes += len(codec.encode("JournalReceipt", receipt))
            join.mark_done(event_id, now)
            changelog_bytes += len(json.dumps(join.entries[event_id].to_json()).encode())
            sealed.append(dict(receipt))
    writer_cpu = time.process_time() - start
    start = time.process_time()
    verdict = verify_chains(
        sealed, [chains.checkpoint(events.now_millis(), "x")], Keyring.of([key.public])
    )
    verify_cpu = time.process_time() - start
    assert verdict.ok, verdict.render()
    json_bytes = sum(len(json.dumps(r, sort_keys=True).encode()) + 1 for r in sealed)
    print(f"messages                          {n}")
    print(
        f"writer CPU per message            {writer_cpu / n * 1000:.3f} ms (decode 3 records, join, seal, encode)"
    )
    print(f"verify CPU per receipt            {verify_cpu / n * 1000:.3f} ms")
    print(f"receipt on Kafka (Avro)           {receipt_bytes / n:.0f} bytes")
    print(f"receipt in a bundle (JSON line)   {json_bytes / n:.0f} bytes")
    print(
        f"changelog per message             {changelog_bytes / n:.0f} bytes (pending entry + done marker)"
    )


if __name__ == "__main__":
    main()
