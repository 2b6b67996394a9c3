"""Pure parts of delivery, without servers: the journal report, the NDR, outcome decisions,
retry tiers and offset tracking."""

from __future__ import annotations

import email
import random
from email import policy
from email.message import EmailMessage, Message
from typing import Any

import pytest

from delivery.ndr import build_ndr, make_ndr_copy
from delivery.report import build_message, build_report, envelope_sender
from delivery.retry import tier_topics
from mailjournal.config import Config
from mailjournal.consumer.partition import PartitionState
from mailjournal.consumer.retry import plan_retry, tier_for_attempt
from mailjournal.dsn import Failure, dsn_status
from mailjournal.mime import body_transfer_encoding, choose_boundary
from mailjournal.smtp.outcomes import Action, ResultClass, SmtpResult, decide, retry_copy
from tests.fixtures.config import make_config
from tests.fixtures.delivery import attached_bytes, make_copy
from tests.fixtures.stamp import is_ours

CONFIG = make_config(
    {
        "delivery": {"reporting_mta": "gw1.corp.example", "ndr_attach_max_bytes": 4096},
    }
)

EXPECTED_REPORT_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "X-MS-Journal-Report",
    "Auto-Submitted",
    "X-MailJournal-Stamp",
    "X-MailJournal-Copy-Id",
    "X-MailJournal-Event-Id",
    "X-MailJournal-Direction",
]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_lines(msg: Message) -> list[str]:
    text = msg.get_payload()[0]
    return str(text.get_payload(decode=True).decode("utf-8")).splitlines()


# -- the journal report ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        b"Subject: a\r\n\r\nbody\r\n",
        b"Subject: no final line break\r\n\r\nbody",
        b"Subject: \xe4\xf6 raw 8-bit\r\n\r\n8-bit \xc3\xa4 body\r\n",
        b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n",
        b"Subject: binary\r\n\r\nNUL \x00 and bare LF\n and bare CR\r here\r\n",
        b"",
    ],
)
def test_report_attaches_the_original_byte_for_byte(original: bytes):
    copy = make_copy(original=original)
    data = build_report(copy, CONFIG)
    msg = parse(data)
    assert [k for k, _ in msg.items()] == EXPECTED_REPORT_HEADERS
    assert msg.get_content_type() == "multipart/mixed"
    text, attached = msg.get_payload()
    assert text.get_content_type() == "text/plain"
    assert attached.get_content_type() == "message/rfc822"
    assert attached_bytes(data) == original
    assert attached["Content-Transfer-Encoding"] == body_transfer_encoding(original)
    assert msg["Content-Transfer-Encoding"] in ("7bit", "8bit", "binary")
    assert build_report(copy, CONFIG) == data  # deterministic: a duplicate send is identical


def test_transfer_encodings():
    assert body_transfer_encoding(b"a\r\nb\r\n") == "7bit"
    assert body_transfer_encoding("ä\r\n".encode()) == "8bit"
    assert body_transfer_encoding(b"a\nb") == "binary"
    assert body_transfer_encoding(b"a\rb") == "binary"
    assert body_transfer_encoding(b"a\x00b") == "binary"
    assert body_transfer_encoding(b"x" * 998 + b"\r\n") == "7bit"
    assert body_transfer_encoding(b"x" * 999 + b"\r\n") == "binary"
    assert body_transfer_encoding(b"a\r\n" + b"x" * 998) == "7bit"
    assert body_transfer_encoding(b"a\r\n" + b"x" * 999) == "binary"


def test_boundary_never_occurs_in_the_original():
    copy = make_copy()
    first = choose_boundary(copy["copy_id"], copy["original"])
    hostile = copy["original"] + b"--" + first.encode() + b"--\r\n"
    copy2 = dict(copy, original=hostile)
    data = build_report(copy2, CONFIG)
    boundary = parse(data).get_boundary()
    assert boundary and boundary != first
    assert attached_bytes(data) == hostile


def test_report_headers_and_envelope_lines():
    copy = make_copy(
        directions=["INBOUND", "OUTBOUND"],
        recipients=[
            {"address": "a@corp.example", "type": "TO", "expanded": None, "forwarded": None},
            {
                "address": "b@corp.example",
                "type": "CC",
                "expanded": "g@corp.example",
                "forwarded": None,
            },
            {
                "address": "c@corp.example",
                "type": "BCC",
                "expanded": None,
                "forwarded": "c@else.example",
            },
            {"address": "d@corp.example", "type": "RECIPIENT", "expanded": None, "forwarded": None},
        ],
        original_sender="",
    )
    msg = parse(build_report(copy, CONFIG))
    assert msg["X-MS-Journal-Report"] == ""
    assert msg["X-MailJournal-Direction"] == "inbound, outbound"
    assert msg["Message-ID"] == f"<{copy['copy_id']}@corp.example>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert is_ours(build_report(copy, CONFIG), copy["journal_address"])
    assert text_lines(msg) == [
        "Sender: <>",
        f"Subject: {copy['subject']}",
        f"Message-ID: {copy['message_id']}",
        "To: a@corp.example",
        "Cc: b@corp.example, Expanded: g@corp.example",
        "Bcc: c@corp.example, Forwarded: c@else.example",
        "Recipient: d@corp.example",
    ]


def test_crlf_and_non_ascii_never_break_the_headers():
    copy = make_copy(
        subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus \r\nBcc: evil@attacker.example\r\n\r\nfake body",
        message_id="<id@ext.example>\r\nX-Injected: yes",
        original_sender="alice@ext.example\r\nTo: evil@attacker.example",
        recipients=[
            {
                "address": "bob@corp.example\nBcc: evil@attacker.example",
                "type": "TO",
                "expanded": "grp@corp.example\rCc: x@y",
                "forwarded": None,
            },
            {"address": "jörg@corp.example", "type": "BCC", "expanded": None, "forwarded": None},
        ],
    )
    data = build_report(copy, CONFIG)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # non-ASCII went into RFC 2047 encoded-words
    msg = parse(data)
    assert [k for k, _ in msg.items()] == EXPECTED_REPORT_HEADERS
    assert not msg.defects
    assert msg["Subject"] == "Grüße aus Bcc: evil@attacker.example fake body"
    subject_lines = head.split(b"\r\nDate:")[0].split(b"Subject:")[1].split(b"\r\n")
    assert all(len(line) <= 78 for line in subject_lines)  # folded
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    lines = text_lines(msg)
    assert lines == [
        "Sender: alice@ext.example To: evil@attacker.example",
        "Subject: Grüße aus Bcc: evil@attacker.example fake body",
        "Message-ID: <id@ext.example> X-Injected: yes",
        "To: bob@corp.example Bcc: evil@attacker.example, Expanded: grp@corp.example Cc: x@y",
        "Bcc: jörg@corp.example",
    ]


def test_long_non_ascii_subject_is_folded_and_round_trips():
    subject = "Überweisung " * 20
    msg = parse(build_report(make_copy(subject=subject), CONFIG))
    assert msg["Subject"] == subject.strip()


def test_non_ascii_journal_address_uses_utf8_headers():
    copy = make_copy(journal_address="jörnal@corp.example")
    data = build_report(copy, CONFIG)
    assert "To: jörnal@corp.example\r\n".encode() in data


def test_copy_format_and_ndr_kind_send_the_bytes_as_they_are():
    copy = make_copy(format="COPY")
    assert build_message(copy, CONFIG) == copy["original"]
    assert envelope_sender(copy) == "journal-ndr-in@corp.example"
    ndr = make_copy(kind="NDR", original=b"ndr bytes")
    assert build_message(ndr, CONFIG) == b"ndr bytes"
    assert envelope_sender(ndr) == ""


# -- the NDR -----------------------------------------------------------------------------------


def _ndr(copy: dict[str, Any], failure: Failure) -> EmailMessage:
    sent = build_message(copy, CONFIG)
    return parse(build_ndr(copy, sent, failure, CONFIG, now_ms=1_700_000_000_000))


def _status_fields(msg: Message) -> tuple[dict[str, str], dict[str, str]]:
    status = msg.get_payload()[1]
    blocks = status.get_payload()
    return dict(blocks[0].items()), dict(blocks[1].items())


def test_ndr_is_an_rfc3464_report_to_the_ndr_address():
    copy = make_copy(
        journal_address="journal-out@corp.example",
        ndr_address="journal-ndr-out@corp.example",
        directions=["OUTBOUND"],
    )
    failure = Failure(
        "550 5.1.1 <journal-out@corp.example>: unknown",
        remote=True,
        expired=False,
        attempts=1,
        last_attempt_ms=1_700_000_000_000,
        remote_mta="smarthost.example",
    )
    msg = _ndr(copy, failure)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "journal-ndr-out@corp.example"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == f"<{copy['copy_id']}.ndr@corp.example>"
    assert msg["X-MailJournal-About-Copy-Id"] == copy["copy_id"]
    ndr = build_ndr(copy, build_message(copy, CONFIG), failure, CONFIG, now_ms=1_700_000_000_000)
    assert is_ours(ndr, "journal-ndr-out@corp.example")
    assert not is_ours(ndr, copy["journal_address"])  # bound to its own destination
    assert "Undeliverable journal report" in msg["Subject"]
    human, status, attached = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert attached.get_content_type() == "message/rfc822"
    per_msg, per_rcpt = _status_fields(msg)
    assert per_msg["Reporting-MTA"] == "dns; gw1.corp.example"
    assert "Arrival-Date" in per_msg
    assert per_rcpt == {
        "Final-Recipient": "rfc822; journal-out@corp.example",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; smarthost.example",
        "Diagnostic-Code": "smtp; 550 5.1.1 <journal-out@corp.example>: unknown",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 22:13:20 +0000",
    }


def test_ndr_attaches_headers_only_above_the_threshold():
    big = make_copy(original=b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100)
    failure = Failure("554 5.3.4 too big", True, False, 1, 1_700_000_000_000)
    attached = _ndr(big, failure).get_payload()[2]
    assert attached.get_content_type() == "text/rfc822-headers"
    assert b"X-MS-Journal-Report" in attached.get_payload(decode=True)


def test_dsn_status_codes():
    assert dsn_status(Failure("550 5.7.1 denied", True, False, 1, 0)) == "5.7.1"
    assert dsn_status(Failure("550 denied", True, False, 1, 0)) == "5.0.0"
    assert dsn_status(Failure("451 4.3.0 later", True, True, 9, 0)) == "4.3.0"
    assert dsn_status(Failure("451 later", True, True, 9, 0)) == "4.4.7"
    assert dsn_status(Failure("connection refused", False, True, 9, 0)) == "4.4.7"
    assert dsn_status(Failure("local refusal", False, False, 1, 0)) == "5.0.0"


def test_ndr_copy_record():
    copy = make_copy()
    ndr = make_ndr_copy(copy, b"NDR", CONFIG, now_ms=123)
    assert ndr["copy_id"] == f"{copy['copy_id']}.ndr"
    assert ndr["kind"] == "NDR"
    assert ndr["journal_address"] == ndr["ndr_address"] == "journal-ndr-in@corp.example"
    assert ndr["about_copy_id"] == copy["copy_id"]
    assert ndr["original"] == b"NDR"
    assert ndr["received_at"] == 123 and ndr["attempt"] == 0
    from schemas import JOURNAL_COPY, decode, encode

    assert decode(encode(JOURNAL_COPY, ndr), JOURNAL_COPY)["copy_id"] == ndr["copy_id"]


# -- outcomes and retries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "klass"),
    [
        (SmtpResult(250, "2.0.0 ok", "data"), ResultClass.DELIVERED),
        (SmtpResult(451, "4.3.0 later", "rcpt"), ResultClass.TRANSIENT),
        (SmtpResult(452, "4.2.2 full", "data"), ResultClass.TRANSIENT),
        (SmtpResult(550, "5.1.1 unknown", "rcpt"), ResultClass.PERMANENT),
        (SmtpResult(554, "5.6.0 bad", "data"), ResultClass.PERMANENT),
        (SmtpResult(553, "5.1.8 sender", "mail"), ResultClass.PERMANENT),
        (SmtpResult(535, "5.7.8 bad credentials", "auth"), ResultClass.TRANSIENT),
        (SmtpResult(554, "no service", "greeting"), ResultClass.TRANSIENT),
        (SmtpResult(None, "connection refused", "connect"), ResultClass.TRANSIENT),
        (SmtpResult(None, "timed out", "data"), ResultClass.TRANSIENT),
        (SmtpResult(552, "5.3.4 too big", "local", permanent_local=True), ResultClass.PERMANENT),
        (SmtpResult(250, "ok", "mail"), ResultClass.TRANSIENT),  # never a delivery before DATA
    ],
)
def test_result_classes(result: SmtpResult, klass: ResultClass):
    assert result.result_class is klass


def test_retry_tiers_and_backoff():
    config = make_config({"delivery": {"retry_delays_seconds": [60, 300, 900]}})
    assert tier_topics(config) == [f"{config.kafka.topics.retry.name}.{i}" for i in range(3)]
    assert [tier_for_attempt(a, 3) for a in range(6)] == [0, 1, 2, 2, 2, 2]
    rng = random.Random(1)
    for _ in range(100):
        plan = plan_retry(1, 1_000_000, 10_000_000, [60, 300, 900], 0.1, rng)
        assert plan.tier == 1
        assert 1_000_000 + 270_000 <= plan.not_before_ms <= 1_000_000 + 330_000
    # never later than the expiry
    assert plan_retry(5, 1_000, 2_000, [60], 0, rng).not_before_ms == 2_000


def test_decide_delivered_retry_and_expiry():
    cfg = make_config(
        {"delivery": {"retry_delays_seconds": [1, 2], "retry_jitter": 0, "expiry_seconds": 10}}
    ).delivery
    rng = random.Random(0)
    copy = make_copy()
    now = 1_000_000
    d = decide(copy, SmtpResult(250, "ok", "data"), now, cfg, rng)
    assert d.action is Action.DELIVERED and d.attempts == 1

    d = decide(copy, SmtpResult(451, "4.3.0 later", "rcpt"), now, cfg, rng)
    assert (d.action, d.tier, d.not_before_ms, d.attempts) == (Action.RETRY, 0, now + 1000, 1)
    again = retry_copy(copy, d)
    assert again["attempt"] == 1 and again["first_attempt_at"] == now
    assert again["last_reply"] == "451 4.3.0 later" and again["copy_id"] == copy["copy_id"]

    d2 = decide(again, SmtpResult(None, "timed out", "data"), now + 1000, cfg, rng)
    assert (d2.action, d2.tier, d2.not_before_ms) == (Action.RETRY, 1, now + 3000)
    # past the expiry (from the first attempt): given up as expired
    d3 = decide(retry_copy(again, d2), SmtpResult(451, "x", "rcpt"), now + 10_000, cfg, rng)
    assert d3.action is Action.FAILED and d3.expired and d3.attempts == 3
    # a 5xx is permanent at once
    d4 = decide(copy, SmtpResult(550, "5.1.1 unknown", "rcpt"), now, cfg, rng)
    assert d4.action is Action.FAILED and not d4.expired


def test_partition_state_commits_below_the_lowest_unfinished():
    s = PartitionState()
    assert s.position() is None
    for o in (10, 11, 12, 13):
        s.add(o)
    assert s.position() == 10
    s.finish(12)
    s.finish(11)
    assert s.position() == 10  # 10 is still in flight
    s.finish(10)
    assert s.position() == 13
    s.finish(13)
    assert s.position() == 14 and s.inflight == 0
    s.rewind(14)  # a retry head at 14 not due: commit stays before it
    assert s.position() == 14
    s.skip(14)
    assert s.position() == 15


def test_config_fixture_is_valid():
    assert isinstance(CONFIG, Config)
