"""Ingest over real SMTP clients on loopback, into the session's real Kafka.

Every accepted message must be in the messages topic byte for byte with its exact envelope; every
refusal must carry the right reply and enhanced status codes and leave no event behind.
"""

from __future__ import annotations

import hashlib
import re
import smtplib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailjournal.smtp.wire import BodyFacts
from tests.fixtures.ingest import RawSMTP, RunningIngest, message_events
from tests.fixtures.smtp import wait_until
from tests.fixtures.trace import assert_event_of

pytestmark = pytest.mark.kafka

QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-HJKMNP-TV-Z]{26})")

MESSAGE = (
    b"Received: from somewhere.example by mx.example; Tue, 1 Jul 2025 10:00:00 +0000\r\n"
    b"Message-ID: <20250701.abc@example.org>\r\n"
    b"Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob <bob@corp.example>,\r\n\tCarol <carol@corp.example>\r\n"
    b"Cc: dave@corp.example\r\n"
    b"Subject: =?utf-8?q?Quarterly_r=C3=A9sults?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"Caf\xc3\xa9 \xe2\x82\xac 8-bit body\r\n"
    b"\r\n"
    b"Subject: not a header, in the body\r\n"
)


def event_id_of(reply: str | bytes) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    m = QUEUED.search(text)
    assert m, f"250 reply without the event id: {text!r}"
    return m.group(1)


def one_event(ingest: RunningIngest, event_id: str) -> dict[str, Any]:
    events = [e for e in message_events(ingest.config, min_count=1) if e["event_id"] == event_id]
    assert len(events) == 1, f"expected exactly one event {event_id}, got {len(events)}"
    return events[0]


def test_smtplib_message_lands_byte_identical_with_envelope(ingest: RunningIngest) -> None:
    with smtplib.SMTP("127.0.0.1", ingest.port(), local_hostname="client.example.org") as s:
        code, features = s.ehlo()
        assert code == 250
        for ext in (
            b"PIPELINING",
            b"SIZE",
            b"8BITMIME",
            b"SMTPUTF8",
            b"ENHANCEDSTATUSCODES",
            b"DSN",
        ):
            assert ext in features
        s.mail(
            "alice@example.org",
            [f"SIZE={len(MESSAGE)}", "BODY=8BITMIME", "RET=HDRS", "ENVID=QQ314159"],
        )
        assert (
            s.rcpt("bob@corp.example", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@corp.example"])[
                0
            ]
            == 250
        )
        assert s.rcpt("Carol@Corp.Example")[0] == 250
        assert s.rcpt("secret-bcc@corp.example", ["NOTIFY=NEVER"])[0] == 250
        code, reply = s.data(MESSAGE)
    assert code == 250
    event_id = event_id_of(reply)
    event = one_event(ingest, event_id)
    assert event["_key"] == event_id
    assert_event_of(event, MESSAGE)
    # (was: size and sha256 of MESSAGE itself; raw now starts with our Received: field)
    assert event["size"] == len(event["raw"]) == event["prepended_length"] + len(MESSAGE)
    assert event["received_sha256"] == hashlib.sha256(MESSAGE).hexdigest()
    # what ingest learnt of the bytes travels with them: exactly what a scan of raw says
    facts = BodyFacts.from_record(event["body_facts"])
    assert facts == BodyFacts.of(event["raw"])
    assert facts is not None and facts.dot_line and facts.eight_bit and not facts.bare_eol
    assert event["mail_from"] == "alice@example.org"
    assert event["mail_params"] == {
        "size": len(MESSAGE),
        "body": "8BITMIME",
        "smtputf8": False,
        "ret": "HDRS",
        "envid": "QQ314159",
        "other": {},
    }
    assert event["recipients"] == [
        {
            "address": "bob@corp.example",
            "notify": ["SUCCESS", "FAILURE"],
            "orcpt": "rfc822;bob@corp.example",
            "other": {},
        },
        {"address": "Carol@corp.example", "notify": None, "orcpt": None, "other": {}},
        {"address": "secret-bcc@corp.example", "notify": ["NEVER"], "orcpt": None, "other": {}},
    ]
    assert event["headers"] == {
        "message_id": "<20250701.abc@example.org>",
        "subject": "=?utf-8?q?Quarterly_r=C3=A9sults?=",
        "from_": "Alice Example <alice@example.org>",
        "to": "Bob <bob@corp.example>,\tCarol <carol@corp.example>",
        "cc": "dave@corp.example",
        "date": "Tue, 1 Jul 2025 10:00:00 +0000",
        "auto_submitted": None,
        "journal_stamp": None,
        "ms_journal_report": None,
    }
    assert event["client"] == {
        "ip": "127.0.0.1",
        "port": event["client"]["port"],
        "helo": "client.example.org",
        "proxied_by": None,
    }
    assert event["client"]["port"] > 0
    assert event["listener"] == "mx" and event["listener_role"] == "internet"
    assert event["tls"] is None and event["auth_user"] is None
    assert event["ingest_host"]
    assert abs(event["received_at"].timestamp() - time.time()) < 120


def test_swaks_message_lands_byte_identical(ingest: RunningIngest, tmp_path: Path) -> None:
    # swaks sends the file's lines with CRLF endings, dot-stuffed, and ends them with
    # "<CRLF>.<CRLF>" itself: the file must not end with its own newline
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE.replace(b"\r\n", b"\n").removesuffix(b"\n"))
    proc = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{ingest.port()}",
            "--ehlo",
            "swaks.example.org",
            "--from",
            "sender@example.org",
            "--to",
            "bob@corp.example,carol@corp.example",
            "--data",
            f"@{data}",
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=False,
        timeout=60,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    event = one_event(ingest, event_id_of(out))
    assert_event_of(event, MESSAGE)
    assert event["mail_from"] == "sender@example.org"
    assert [r["address"] for r in event["recipients"]] == ["bob@corp.example", "carol@corp.example"]
    assert event["client"]["helo"] == "swaks.example.org"
    assert event["headers"]["message_id"] == "<20250701.abc@example.org>"


def test_null_sender_and_empty_message(ingest: RunningIngest) -> None:
    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO bounce.example")[0] == 250
        assert c.cmd("MAIL FROM:<>") == (250, "2.1.0 Sender ok")
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        code, text = c.cmd(".")
        assert code == 250
        assert c.cmd("QUIT")[0] == 221
    event = one_event(ingest, event_id_of(text))
    assert event["mail_from"] == ""
    assert_event_of(event, b"")


def envelope(c: RawSMTP, sender: str = "a@example.org", *rcpts: str) -> None:
    assert c.reply()[0] == 220
    assert c.cmd("EHLO client.example")[0] == 250
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>")[0] == 250


def refused_codes(reply: tuple[int, str]) -> tuple[int, str]:
    code, text = reply
    return code, text.split(" ", 1)[0]


def test_policy_refusals_with_enhanced_codes(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"max_recipients": 2, "max_message_size": 4096}})
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        assert refused_codes(c.cmd("MAIL FROM:<a@example.org>")) == (503, "5.5.1")  # no EHLO
        assert c.cmd("EHLO client.example")[0] == 250
        assert refused_codes(c.cmd("RCPT TO:<u@corp.example>")) == (503, "5.5.1")  # no MAIL
        assert refused_codes(c.cmd("MAIL FROM:<not an address>")) == (501, "5.1.7")
        assert refused_codes(c.cmd("MAIL FROM:<a@example.org> SIZE=5000")) == (552, "5.3.4")
        assert refused_codes(c.cmd("MAIL FROM:<a@example.org> XFOO=1")) == (555, "5.5.4")
        assert c.cmd("MAIL FROM:<a@example.org> SIZE=100")[0] == 250
        assert refused_codes(c.cmd("MAIL FROM:<a@example.org>")) == (503, "5.5.1")  # nested
        # relay control: external recipient from an untrusted client
        assert refused_codes(c.cmd("RCPT TO:<x@other.example>")) == (554, "5.7.1")
        # journal and NDR addresses look like unknown users from outside
        for protected in ("journal-in@corp.example", "journal-ndr-out@corp.example"):
            code, text = c.cmd(f"RCPT TO:<{protected}>")
            assert (code, text.split()[0]) == (550, "5.1.1") and "User unknown" in text
        assert refused_codes(c.cmd("RCPT TO:<bad address>")) == (501, "5.1.3")
        assert c.cmd("RCPT TO:<u1@corp.example>")[0] == 250
        assert c.cmd("RCPT TO:<u2@corp.example>")[0] == 250
        assert refused_codes(c.cmd("RCPT TO:<u3@corp.example>")) == (452, "4.5.3")
        # actual size over the limit: read to the end, then 552
        assert c.cmd("DATA")[0] == 354
        c.send((b"y" * 78 + b"\r\n") * 100 + b".\r\n")
        assert refused_codes(c.reply()) == (552, "5.3.4")
        # the session goes on: a line too long, then a bare LF
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<u1@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"z" * 1200 + b"\r\n.\r\n")
        assert refused_codes(c.reply()) == (550, "5.6.0")
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<u1@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: x\n\nbare LF\r\n.\r\n")
        code, text = c.reply()
        assert (code, text.split()[0]) == (550, "5.6.0") and "bare" in text
        assert refused_codes(c.cmd("DATA")) == (503, "5.5.1")
        assert c.cmd("QUIT")[0] == 221
    assert message_events(ing.config) == []


def test_trusted_network_may_relay_and_reach_journal_addresses(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"organization": {"trusted_networks": ["127.0.0.0/8"]}})
    with smtplib.SMTP("127.0.0.1", ing.port()) as s:
        refused = s.sendmail(
            "u@corp.example",
            ["x@other.example", "journal-in@corp.example"],
            b"Subject: o\r\n\r\nx\r\n",
        )
    assert refused == {}
    assert len(message_events(ing.config, min_count=1)) == 1


def test_relay_listener_is_trusted(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory(listeners=[{"name": "submit", "port": 0, "role": "relay"}])
    with smtplib.SMTP("127.0.0.1", ing.port("submit")) as s:
        s.sendmail("u@corp.example", ["x@other.example"], b"Subject: o\r\n\r\nx\r\n")
    (event,) = message_events(ing.config, min_count=1)
    assert event["listener"] == "submit" and event["listener_role"] == "relay"


def test_pipelining(ingest: RunningIngest) -> None:
    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO pipe.example")[0] == 250
        c.send(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u1@corp.example>\r\n"
            b"RCPT TO:<x@other.example>\r\nRCPT TO:<u2@corp.example>\r\nDATA\r\n"
        )
        assert [c.reply()[0] for _ in range(5)] == [250, 250, 554, 250, 354]
        # the end of data, the next transaction and QUIT in one write
        c.send(
            b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<b@example.org>\r\n"
            b"RCPT TO:<u3@corp.example>\r\nDATA\r\n"
        )
        first = c.reply()
        assert first[0] == 250
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        second = c.reply()
        assert second[0] == 250
        assert c.reply()[0] == 221
    events = {e["event_id"]: e for e in message_events(ingest.config, min_count=2)}
    one, two = events[event_id_of(first[1])], events[event_id_of(second[1])]
    assert_event_of(one, b"Subject: one\r\n\r\nfirst\r\n")
    assert [r["address"] for r in one["recipients"]] == ["u1@corp.example", "u2@corp.example"]
    assert_event_of(two, b"Subject: two\r\n\r\nsecond\r\n")
    assert two["mail_from"] == "b@example.org"


def test_client_half_close_still_gets_its_answers(ingest: RunningIngest) -> None:
    """A client that sends the whole session and shuts its sending side (a batch client) is
    answered in full: the message is stored and acknowledged, QUIT gets 221, then we close."""
    import socket

    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        c.send(
            b"EHLO batch.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<u1@corp.example>\r\n"
            b"DATA\r\n"
        )
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        c.send(b"Subject: batch\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        stored = c.reply()
        assert stored[0] == 250
        assert c.reply()[0] == 221
        assert c.sock.recv(1) == b""  # and the server closed
    assert_event_of(one_event(ingest, event_id_of(stored[1])), b"Subject: batch\r\n\r\nbody\r\n")


def test_rset_and_helo(ingest: RunningIngest) -> None:
    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("HELO old.example") == (250, "localhost")  # no enhanced code on HELO
        assert refused_codes(c.cmd("MAIL FROM:<a@example.org> SIZE=10")) == (501, "5.5.4")
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RSET") == (250, "2.0.0 OK")
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 503
        assert c.cmd("NOOP") == (250, "2.0.0 OK")
        assert c.cmd("QUIT") == (221, "2.0.0 Bye")


def test_connection_limits(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"max_connections": 3, "max_connections_per_client": 2}})
    a, b = RawSMTP(ing.port()), RawSMTP(ing.port())
    try:
        assert a.reply()[0] == 220 and b.reply()[0] == 220
        with RawSMTP(ing.port()) as c:
            assert refused_codes(c.reply()) == (421, "4.7.0")
            assert c.closed()
    finally:
        a.close()
        b.close()
    # slots are given back when connections end

    def greeted() -> bool:
        with RawSMTP(ing.port()) as d:
            return bool(d.reply()[0] == 220)

    wait_until(greeted, 5, "the connection slots to be released")


def test_global_connection_limit(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"max_connections": 1}})
    with RawSMTP(ing.port()) as a:
        assert a.reply()[0] == 220
        with RawSMTP(ing.port()) as b:
            code, text = b.reply()
            assert (code, text.split()[0]) == (421, "4.7.0") and "Too many connections" in text


def test_idle_and_data_timeouts(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"command_timeout_seconds": 0.5, "data_timeout_seconds": 0.5}})
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        started = time.monotonic()
        assert c.closed(timeout=5)
        assert 0.4 < time.monotonic() - started < 3
        assert c.buf.startswith(b"421 4.4.2 ")
    with RawSMTP(ing.port()) as c:
        envelope(c, "a@example.org", "u@corp.example")
        assert c.cmd("DATA")[0] == 354
        for _ in range(4):  # data that keeps coming keeps the session alive
            c.send(b"still here\r\n")
            time.sleep(0.2)  # not synchronisation: a client sending slowly, under the timeout
        assert c.closed(timeout=5)  # then silence: closed
    assert message_events(ing.config) == []


def test_metrics_count_without_addresses(ingest: RunningIngest) -> None:
    from prometheus_client import REGISTRY, generate_latest

    with smtplib.SMTP("127.0.0.1", ingest.port()) as s:
        s.sendmail("a@example.org", ["u@corp.example"], b"Subject: m\r\n\r\nx\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@example.org", ["x@other.example"], b"Subject: m\r\n\r\nx\r\n")
    text = generate_latest(REGISTRY).decode()
    assert re.search(r'mailjournal_ingest_messages_accepted_total\{listener="mx"\} [1-9]', text)
    assert re.search(
        r'mailjournal_ingest_refusals_total\{command="RCPT",listener="mx",'
        r'reason="relay_denied",reply_class="5xx"\} [1-9]',
        text,
    )
    assert "mailjournal_ingest_kafka_ack_seconds_bucket" in text
    assert "mailjournal_ingest_open_connections" in text
    assert "@" not in "".join(line for line in text.splitlines() if "mailjournal_ingest" in line)


def test_back_pressure_messages_in_flight(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"max_inflight_messages": 1}})
    with RawSMTP(ing.port()) as first, RawSMTP(ing.port()) as second:
        envelope(first, "a@example.org", "u@corp.example")
        envelope(second, "b@example.org", "u@corp.example")
        assert first.cmd("DATA")[0] == 354  # holds the only slot while its data comes in
        assert refused_codes(second.cmd("DATA")) == (451, "4.3.1")
        assert first.cmd(b"Subject: one\r\n\r\nx\r\n.")[0] == 250
        # the slot is free again; the refused client's retry goes through
        assert second.cmd("MAIL FROM:<b@example.org>")[0] == 250
        assert second.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert second.cmd("DATA")[0] == 354
        assert second.cmd(b"Subject: two\r\n\r\nx\r\n.")[0] == 250
    assert len(message_events(ing.config, min_count=2)) == 2


def test_back_pressure_bytes_in_flight(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"max_inflight_bytes": 4096}})
    with RawSMTP(ing.port()) as c:
        envelope(c, "a@example.org", "u@corp.example")
        assert c.cmd("DATA")[0] == 354
        c.send((b"b" * 78 + b"\r\n") * 100 + b".\r\n")  # 8 KB: more than the budget
        assert refused_codes(c.reply()) == (451, "4.3.1")
        # the budget was given back: a small message fits
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(b"Subject: small\r\n\r\nx\r\n.")[0] == 250
    (event,) = message_events(ing.config, min_count=1)
    assert event["headers"]["subject"] == "small"


def test_undecodable_bytes_in_commands(ingest: RunningIngest) -> None:
    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd(b"EHLO h\xff\xfest.example")[0] == 250
        assert refused_codes(c.cmd(b"MAIL FROM:<\xff@example.org> SMTPUTF8")) == (501, "5.1.7")
        assert refused_codes(c.cmd(b"MAIL FROM:<a@example.org> AUTH=\xff")) == (501, "5.5.4")
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(b"Subject: \xff\xfe\r\n\r\nx\r\n.")[0] == 250
    (event,) = message_events(ingest.config, min_count=1)
    assert event["client"]["helo"] == "h\ufffd\ufffdst.example"
    assert_event_of(event, b"Subject: \xff\xfe\r\n\r\nx\r\n")
