"""The delivery worker end to end on real parts: journal copies written to a real Kafka topic,
delivered to a real aiosmtpd capture server (or Postfix's smtp-sink), outcomes and dead letters
read back from Kafka."""

from __future__ import annotations

import email
import json
import re
from email import policy
from email.message import Message
from typing import Any

import pytest

from delivery import dlq
from delivery.report import build_report
from mailjournal import cli
from mailjournal.config import Config
from mailjournal.topics import retry_topic_name
from schemas import now_millis
from tests.fixtures.config import STAMP_KEY
from tests.fixtures.delivery import (
    attached_bytes,
    delivery_config,
    latest_outcomes,
    make_copy,
    produce_copies,
    read_dead_letters,
    read_outcomes,
    wait_outcomes,
    write_toml,
)
from tests.fixtures.smtp import CaptureServer, SmtpSink, wait_until
from tests.fixtures.stamp import is_ours

pytestmark = pytest.mark.kafka

JOURNAL_IN = "journal-in@corp.example"
JOURNAL_OUT = "journal-out@corp.example"
NDR_IN = "journal-ndr-in@corp.example"
NDR_OUT = "journal-ndr-out@corp.example"


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def parts(data: bytes) -> list[Message]:
    msg = email.message_from_bytes(data, policy=policy.compat32)
    assert msg.is_multipart()
    return list(msg.get_payload())


def test_a_key_file_broken_while_running_changes_no_report(
    kafka_config: Config, worker_threads, smtp_capture: CaptureServer, tmp_path
):
    """Delivery reads its stamp key once, at start. Read per copy, a key file rewritten
    non-atomically (empty for a moment) turned the reports of that moment into bare, unstamped
    copies of the original: no envelope for the archive, no loop guard."""
    key_file = tmp_path / "stamp.key"
    key_file.write_bytes(STAMP_KEY)
    config = delivery_config(
        kafka_config, smtp_capture.port, {"journal": {"stamp_secret_file": str(key_file)}}
    )
    fallbacks = metric("mailjournal_delivery_render_fallbacks_total", what="report")
    first = make_copy()
    produce_copies(config, [first])
    worker_threads(config)
    smtp_capture.wait_for(1, timeout=30)
    key_file.write_bytes(b"")  # broken: 0 bytes of key material
    second = make_copy()
    produce_copies(config, [second])
    got = smtp_capture.wait_for(2, timeout=30)
    # the very reports the start-time key makes (kafka_config's key file holds the same key)
    assert [m.data for m in got] == [build_report(c, kafka_config) for c in (first, second)]
    assert all(is_ours(m.data, JOURNAL_IN) for m in got)
    assert metric("mailjournal_delivery_render_fallbacks_total", what="report") == fallbacks


def test_report_reaches_capture_server(
    kafka_config: Config, worker_threads, smtp_capture: CaptureServer
):
    config = delivery_config(kafka_config, smtp_capture.port)
    copy = make_copy(
        recipients=[
            {"address": "bob@corp.example", "type": "TO", "expanded": None, "forwarded": None},
            {"address": "carol@corp.example", "type": "CC", "expanded": None, "forwarded": None},
            {
                "address": "dave@corp.example",
                "type": "BCC",
                "expanded": "team@corp.example",
                "forwarded": None,
            },
            {
                "address": "erin@corp.example",
                "type": "RECIPIENT",
                "expanded": None,
                "forwarded": "erin@elsewhere.example",
            },
        ]
    )
    produce_copies(config, [copy])
    delivered = "mailjournal_delivery_attempts_total"
    before = {
        "attempts": metric(delivered, kind="journal", result="delivered"),
        "rtt": metric("mailjournal_delivery_smtp_seconds_count"),
        "e2e": metric("mailjournal_delivery_end_to_end_seconds_count", kind="journal"),
    }
    worker_threads(config)
    [got] = smtp_capture.wait_for(1, timeout=30)
    assert got.mail_from == NDR_IN
    assert got.rcpt_tos == [JOURNAL_IN]
    wait_until(
        lambda: metric(delivered, kind="journal", result="delivered") == before["attempts"] + 1,
        10,
        "the attempt metric",
    )
    assert metric("mailjournal_delivery_smtp_seconds_count") == before["rtt"] + 1
    assert metric("mailjournal_delivery_end_to_end_seconds_count", kind="journal") == (
        before["e2e"] + 1
    )
    assert metric("mailjournal_delivery_smtp_connections") >= 1  # the session is kept for reuse
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg["X-MS-Journal-Report"] == ""
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["From"] == "mailjournal@corp.example"
    assert msg["To"] == JOURNAL_IN
    assert msg["Subject"] == "Quarterly figures"
    assert msg["Message-ID"] == f"<{copy['copy_id']}@corp.example>"
    assert msg["X-MailJournal-Copy-Id"] == copy["copy_id"]
    assert msg["X-MailJournal-Event-Id"] == copy["event_id"]
    assert msg["X-MailJournal-Direction"] == "inbound"
    assert is_ours(got.data, JOURNAL_IN)  # the v2 stamp verifies, for this destination
    text, attached = parts(got.data)
    assert text.get_content_type() == "text/plain"
    assert text.get_payload(decode=True).decode().splitlines() == [
        "Sender: alice@ext.example",
        "Subject: Quarterly figures",
        f"Message-ID: {copy['message_id']}",
        "To: bob@corp.example",
        "Cc: carol@corp.example",
        "Bcc: dave@corp.example, Expanded: team@corp.example",
        "Recipient: erin@corp.example, Forwarded: erin@elsewhere.example",
    ]
    assert attached.get_content_type() == "message/rfc822"
    assert attached_bytes(got.data) == copy["original"]
    # the whole report is exactly what the pure builder makes (nothing altered in transit)
    assert got.data == build_report(copy, config)
    latest = wait_outcomes(config, lambda o: copy["copy_id"] in o, what="delivered outcome")
    out = latest[copy["copy_id"]]
    assert out["status"] == "DELIVERED"
    assert out["attempts"] == 1
    assert out["delivered_to_host"] == smtp_capture.address
    assert out["remote_reply"].startswith("250")


def test_copy_format_is_the_original_unaltered(kafka_config: Config, worker_threads, smtp_capture):
    config = delivery_config(kafka_config, smtp_capture.port)
    raw = (
        "From: =?utf-8?q?J=C3=B6rg?= <jorg@corp.example>\r\n"
        "To: partner@ext.example\r\n"
        "Subject: Grüße\r\n"  # raw 8-bit header, as some clients send
        "\r\n"
        "8-bit body: Größe\r\n.\r\n..\r\nend"  # no final CRLF: SMTP adds one
    ).encode()
    copy = make_copy(
        journal_address=JOURNAL_OUT,
        ndr_address=NDR_OUT,
        directions=["OUTBOUND"],
        format="COPY",
        original=raw,
    )
    produce_copies(config, [copy])
    worker_threads(config)
    [got] = smtp_capture.wait_for(1, timeout=30)
    assert got.mail_from == NDR_OUT
    assert got.rcpt_tos == [JOURNAL_OUT]
    assert got.data == raw + b"\r\n"  # the line break SMTP's end of data needs, nothing else
    assert "BODY=8BITMIME" in got.mail_options


def test_retry_451_twice_then_delivered(kafka_config: Config, worker_threads, smtp_capture):
    config = delivery_config(kafka_config, smtp_capture.port)
    smtp_capture.script(JOURNAL_IN, "451 4.3.0 try again later", "451 4.3.0 try again later")
    copy = make_copy()
    produce_copies(config, [copy])
    worker_threads(config)
    [got] = smtp_capture.wait_for(1, timeout=30)
    assert got.data == build_report(copy, config)  # the retried copy is the same report
    latest = wait_outcomes(
        config,
        lambda o: o.get(copy["copy_id"], {}).get("status") == "DELIVERED",
        what="delivered after retries",
    )
    assert latest[copy["copy_id"]]["attempts"] == 3
    history = [o for o in read_outcomes(config) if o["copy_id"] == copy["copy_id"]]
    assert [o["status"] for o in history] == ["RETRYING", "RETRYING", "DELIVERED"]
    assert history[0]["remote_reply"] == "451 4.3.0 try again later"
    assert history[0]["next_attempt_at"] is not None
    replies = [a.reply for a in smtp_capture.attempts_for(JOURNAL_IN)]
    assert replies == ["451 4.3.0 try again later", "451 4.3.0 try again later", "250 OK"]
    assert len(smtp_capture.messages) == 1


def _dsn_fields(part: Message) -> tuple[dict[str, str], dict[str, str]]:
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2, blocks
    return dict(blocks[0].items()), dict(blocks[1].items())


@pytest.mark.parametrize(
    ("direction", "journal", "ndr"),
    [("INBOUND", JOURNAL_IN, NDR_IN), ("OUTBOUND", JOURNAL_OUT, NDR_OUT)],
)
def test_550_sends_one_ndr_to_the_directions_ndr_address(
    kafka_config: Config, worker_threads, smtp_capture, direction: str, journal: str, ndr: str
):
    config = delivery_config(kafka_config, smtp_capture.port)
    ndrs = metric(
        "mailjournal_delivery_ndrs_total", direction=direction.lower(), reason="permanent"
    )
    smtp_capture.always(journal, "550 5.1.1 <journal@corp.example>: mailbox unavailable")
    copy = make_copy(journal_address=journal, ndr_address=ndr, directions=[direction])
    produce_copies(config, [copy])
    worker_threads(config)
    [got] = smtp_capture.wait_for(1, timeout=30, to=ndr)
    assert got.mail_from == ""  # MAIL FROM:<>
    assert got.rcpt_tos == [ndr]
    msg = email.message_from_bytes(got.data, policy=policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"] == ndr
    assert msg["X-MailJournal-Stamp"]
    assert msg["Message-ID"] == f"<{copy['copy_id']}.ndr@corp.example>"
    human, status, attached = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = _dsn_fields(status)
    assert per_msg["Reporting-MTA"] == "dns; mailjournal.test"
    assert per_msg["Arrival-Date"]
    assert per_rcpt["Final-Recipient"] == f"rfc822; {journal}"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <journal@corp.example>: mailbox unavailable"
    )
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert per_rcpt["Last-Attempt-Date"]
    assert attached.get_content_type() == "message/rfc822"
    # the original sender never hears of it; nothing else was sent; one NDR only
    assert all(m.rcpt_tos == [ndr] for m in smtp_capture.messages)
    latest = wait_outcomes(
        config,
        lambda o: (
            o.get(copy["copy_id"], {}).get("status") == "NDR_SENT"
            and o.get(f"{copy['copy_id']}.ndr", {}).get("status") == "DELIVERED"
        ),
        what="NDR_SENT",
    )
    failed = latest[copy["copy_id"]]
    assert failed["ndr_copy_id"] == f"{copy['copy_id']}.ndr"
    assert failed["remote_reply"].startswith("550 5.1.1")
    assert latest[f"{copy['copy_id']}.ndr"]["kind"] == "NDR"
    assert len(smtp_capture.messages) == 1
    assert (
        metric("mailjournal_delivery_ndrs_total", direction=direction.lower(), reason="permanent")
        == ndrs + 1
    )


def test_ndr_refused_is_dead_lettered_then_replayed(
    kafka_config: Config, worker_threads, smtp_capture, tmp_path, capsys
):
    config = delivery_config(kafka_config, smtp_capture.port)
    smtp_capture.always(JOURNAL_IN, "550 5.7.1 journal mailbox refuses")
    smtp_capture.always(NDR_IN, "550 5.1.1 NDR mailbox unknown")
    copy = make_copy()
    ndr_id = f"{copy['copy_id']}.ndr"
    dead = metric("mailjournal_delivery_dead_letters_total", reason="ndr_failed")
    produce_copies(config, [copy])
    worker = worker_threads(config)
    wait_outcomes(
        config,
        lambda o: o.get(ndr_id, {}).get("status") == "DEAD_LETTERED",
        what="dead-lettered NDR",
    )
    [letter] = read_dead_letters(config)
    assert letter["copy_id"] == ndr_id
    assert "550 5.1.1 NDR mailbox unknown" in letter["reason"]
    assert letter["source_topic"] == config.kafka.topics.journal.name
    assert metric("mailjournal_delivery_dead_letters_total", reason="ndr_failed") == dead + 1
    # exactly one attempt each: the copy, its NDR; no NDR about the NDR
    assert len(smtp_capture.attempts_for(JOURNAL_IN)) == 1
    assert len(smtp_capture.attempts_for(NDR_IN)) == 1
    assert smtp_capture.messages == []

    entries = dlq.read_dead_letters(config)
    assert [e.id for e in dlq.open_dead_letters(entries)] == [letter["id"]]
    config_file = write_toml(config, tmp_path / "mailjournal.toml")
    assert cli.main(["dlq", "list", "--config", str(config_file), "--json"]) == 0
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (listed["id"], listed["copy_id"], listed["kind"]) == (letter["id"], ndr_id, "NDR")
    assert listed["journal_address"] == NDR_IN and listed["replayable"]

    smtp_capture.clear(NDR_IN)  # the NDR mailbox recovers
    assert cli.main(["dlq", "replay", "--config", str(config_file), "--id", ndr_id]) == 0
    assert letter["id"] in capsys.readouterr().out
    [got] = smtp_capture.wait_for(1, timeout=30, to=NDR_IN)
    assert got.mail_from == ""
    assert email.message_from_bytes(got.data)["Message-ID"] == f"<{ndr_id}@corp.example>"
    wait_outcomes(
        config, lambda o: o.get(ndr_id, {}).get("status") == "DELIVERED", what="replayed NDR"
    )
    # a second replay finds nothing open: the dead letter is not re-queued again
    done, _ = dlq.replay(config, None)
    assert done == []
    assert cli.main(["dlq", "replay", "--config", str(config_file), "--id", ndr_id]) == 3
    assert dlq.open_dead_letters(dlq.read_dead_letters(config)) == []
    assert worker.stop() == 0
    assert len(smtp_capture.messages_to(NDR_IN)) == 1


def test_expiry_sends_ndr(kafka_config: Config, worker_threads, smtp_capture):
    config = delivery_config(
        kafka_config,
        smtp_capture.port,
        {"delivery": {"retry_delays_seconds": [0.3], "retry_jitter": 0, "expiry_seconds": 1.5}},
    )
    smtp_capture.always(JOURNAL_IN, "451 4.2.0 mailbox busy")
    copy = make_copy()
    produce_copies(config, [copy])
    worker_threads(config)
    [got] = smtp_capture.wait_for(1, timeout=30, to=NDR_IN)
    msg = email.message_from_bytes(got.data, policy=policy.compat32)
    _, per_rcpt = _dsn_fields(msg.get_payload()[1])
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "4.2.0"  # the server's own code for the last temporary failure
    assert per_rcpt["Diagnostic-Code"] == "smtp; 451 4.2.0 mailbox busy"
    assert "expired" in msg.get_payload()[0].get_payload(decode=True).decode()
    latest = wait_outcomes(
        config, lambda o: o.get(copy["copy_id"], {}).get("status") == "NDR_SENT", what="expiry"
    )
    attempts = latest[copy["copy_id"]]["attempts"]
    # attempts at 0, 0.3, 0.6, 0.9, 1.2, then the last one at the deadline (1.5 s)
    assert 4 <= attempts <= 7, attempts
    assert len(smtp_capture.attempts_for(JOURNAL_IN)) == attempts


def test_smtp_sink_few_thousand_each_delivered_once(kafka_config: Config, worker_threads, tmp_path):
    n = 3000
    with SmtpSink(log_path=tmp_path / "sink.log") as sink:
        config = delivery_config(
            kafka_config, sink.port, {"delivery": {"concurrency": 8, "max_inflight": 256}}
        )
        copies = [make_copy() for _ in range(n)]
        produce_copies(config, copies)
        worker = worker_threads(config)
        wait_until(lambda: worker.handler.stats.delivered >= n, 120, f"{n} deliveries")
        assert worker.stop() == 0
    outcomes = read_outcomes(config, min_count=n)
    by_copy: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        by_copy.setdefault(o["copy_id"], []).append(o)
    assert set(by_copy) == {c["copy_id"] for c in copies}
    assert all([o["status"] for o in v] == ["DELIVERED"] for v in by_copy.values())


def test_undecodable_record_is_dead_lettered(kafka_config: Config, worker_threads, smtp_capture):
    from mailjournal.kafka import make_producer

    config = delivery_config(kafka_config, smtp_capture.port)
    producer = make_producer(config)
    producer.produce(config.kafka.topics.journal.name, key=b"junk", value=b"not avro")
    producer.flush(10)
    good = make_copy()
    produce_copies(config, [good])
    worker_threads(config)
    smtp_capture.wait_for(1, timeout=30)
    letters = wait_until(lambda: read_dead_letters(config), 20, "dead letter")
    assert letters[0]["value"] == b"not avro"
    assert letters[0]["key"] == b"junk"
    assert re.search("undecodable", letters[0]["reason"])
    assert latest_outcomes(config)[good["copy_id"]]["status"] == "DELIVERED"


def test_waiting_retries_never_hold_up_fresh_traffic(
    kafka_config: Config, worker_threads, smtp_capture
):
    from prometheus_client import REGISTRY

    # a tier whose delay covers the copies' wait: a head waits at most its tier's longest delay
    slow_tier = {"delivery": {"retry_delays_seconds": [150.0], "expiry_seconds": 600}}
    config = delivery_config(kafka_config, smtp_capture.port, slow_tier)
    tier0 = retry_topic_name(config, 0)
    later = now_millis() + 120_000
    waiting = [
        make_copy(attempt=1, not_before=later, first_attempt_at=now_millis(), last_reply="451 x")
        for _ in range(20)
    ]
    produce_copies(config, waiting, topic=tier0)
    worker = worker_threads(config)
    worker.worker.gauge_interval_seconds = 0.2
    fresh = [make_copy() for _ in range(5)]
    produce_copies(config, fresh)
    got = smtp_capture.wait_for(5, timeout=30)
    assert sorted(m.data for m in got) == sorted(build_report(c, config) for c in fresh)

    def gauge() -> float:
        return REGISTRY.get_sample_value("mailjournal_delivery_retry_waiting", {"tier": "0"}) or 0

    wait_until(lambda: gauge() == len(waiting), 20, "the retry backlog gauge")
    # the waiting copies are neither attempted nor held in memory; their offsets stay uncommitted
    assert len(smtp_capture.messages) == 5
    assert worker.handler.stats.attempts == 5
    assert worker.stop() == 0
    assert set(latest_outcomes(config)) == {c["copy_id"] for c in fresh}


def test_a_second_worker_joining_takes_over_partitions_without_duplicates(
    kafka_config: Config, worker_threads, smtp_capture
):
    config = delivery_config(kafka_config, smtp_capture.port)
    copies = [make_copy() for _ in range(600)]
    produce_copies(config, copies)
    # keep the first worker busy while the second joins (16 sessions: ~80 copies/s, ~7 s)
    smtp_capture.data_delay = 0.2
    first = worker_threads(config)
    wait_until(lambda: len(smtp_capture.messages) >= 30, 30, "the first deliveries")
    second = worker_threads(config)
    smtp_capture.wait_for(len(copies), timeout=60)
    assert first.stop() == 0 and second.stop() == 0
    assert second.handler.stats.delivered > 0  # the second worker did take partitions over
    assert first.handler.stats.delivered + second.handler.stats.delivered == len(copies)
    ids = [email.message_from_bytes(m.data)["X-MailJournal-Copy-Id"] for m in smtp_capture.messages]
    assert sorted(ids) == sorted(c["copy_id"] for c in copies)  # each exactly once


def test_the_byte_budget_bounds_the_copies_held_while_the_archive_hangs(
    kafka_config: Config, worker_threads, smtp_capture
):
    """max_inflight_bytes, not max_inflight, bounds memory with large copies: with the archive
    hung at DATA, a 1 MiB budget holds two 400 KB copies (the second taken while one was held)
    and takes no third though 16 sessions and a window of 256 are free; once the archive
    answers, every copy is delivered once."""
    size = 400 * 1024
    config = delivery_config(
        kafka_config,
        smtp_capture.port,
        {
            "delivery": {
                "max_inflight_bytes": 1024 * 1024,
                "concurrency": 16,
                "command_timeout_seconds": 300,  # hung, not failed: no attempt ends meanwhile
            }
        },
    )
    head = b"Subject: big\r\nFrom: a@ext.example\r\n\r\n"
    copies = [make_copy(original=head + (b"x" * 76 + b"\r\n") * (size // 78)) for _ in range(10)]
    smtp_capture.data_gate.clear()
    produce_copies(config, copies)
    worker = worker_threads(config)
    try:
        # full for a second (it pauses its partitions): what it holds now is what it took
        wait_until(
            lambda: worker.worker.stats.full and smtp_capture.data_waiting == 2,
            60,
            "two copies at the hung archive and the worker full",
        )
        assert metric("mailjournal_delivery_inflight", source="journal") == 2
        held = metric("mailjournal_delivery_inflight_bytes")
        assert 2 * size < held < 3 * size
        assert smtp_capture.data_waiting == 2
    finally:
        smtp_capture.data_gate.set()
    got = smtp_capture.wait_for(len(copies), timeout=60)
    assert sorted(m.data for m in got) == sorted(build_report(c, config) for c in copies)
    assert worker.stop() == 0
    assert metric("mailjournal_delivery_inflight_bytes") == 0
