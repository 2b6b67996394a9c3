"""Evasion classes of issue 13 (loop-guard stamp, direction, missing Message-ID) end to end:
SMTP into ``mailjournal run`` (ingest, journal worker, delivery on the real broker), journal
reports at a capture SMTP server, then ``mailjournal audit`` with zero gaps.

Two loopback addresses make two clients: 127.0.0.2 is the trusted network (an internal MTA, or
the smart host handing a report back), 127.0.0.1 the Internet.
"""

from __future__ import annotations

import email
import smtplib
from collections.abc import Callable
from email import policy

import pytest

from ingest.headers import selected_headers
from mailjournal.config import Config
from tests.fixtures.delivery import attached_bytes
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer, wait_until
from tests.fixtures.trace import assert_ours_then, split_ours

pytestmark = pytest.mark.kafka

J_IN, J_OUT = "journal-in@corp.example", "journal-out@corp.example"  # tests/fixtures/config.py
N_IN = "journal-ndr-in@corp.example"
TRUSTED, OUTSIDE = "127.0.0.2", "127.0.0.1"


def send(p: Pipeline, source: str, sender: str, rcpts: list[str], data: bytes) -> str:
    """One transaction from ``source``; the event id of the 250 reply."""
    with smtplib.SMTP("127.0.0.1", p.smtp_port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        code, reply = smtp.mail(sender)
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, reply)
        code, reply = smtp.data(data)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def message(subject: str, *extra: str, message_id: bool = True) -> bytes:
    lines = [*extra, "From: someone@ext.example", "To: alice@corp.example", f"Subject: {subject}"]
    if message_id:
        lines.append(f"Message-ID: <{subject}@ext.example>")
    return ("\r\n".join(lines) + "\r\n\r\nHello.\r\n").encode()


def reports(capture: CaptureServer) -> dict[str, list[tuple[str, bytes]]]:
    """event id -> [(journal address, report bytes)] of the journal reports received."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for m in capture.messages:
        msg = email.message_from_bytes(m.data, policy=policy.compat32)
        event = msg.get("X-MailJournal-Event-Id")
        if event and msg.get("X-MS-Journal-Report") is not None:
            for rcpt in m.rcpt_tos:
                out.setdefault(event, []).append((rcpt, m.data))
    return out


def stamp_of(report: bytes) -> str:
    value = selected_headers(report)["journal_stamp"]
    assert value and value.startswith("v2;")
    return value


def test_evasion_classes_are_journaled(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    config = pipeline_config(
        kafka_config, smtp_capture.port, {"organization": {"trusted_networks": ["127.0.0.2/32"]}}
    )
    p = pipeline_factory(config).start()

    # a real journal report first: the stamp an attacker could copy
    first_sent = message("first")
    first = send(p, OUTSIDE, "someone@ext.example", ["alice@corp.example"], first_sent)
    wait_until(lambda: first in reports(smtp_capture), 90, "the first journal report")
    ((journal, real_report),) = reports(smtp_capture)[first]
    assert journal == J_IN
    real_stamp = stamp_of(real_report)
    v1_stamp = "v1; copy=" + first + ".0123456789abcdef; mac=0123456789abcdef0123456789abcdef"

    # attack -> the journal address (and direction) that must still get a copy
    no_id_1, no_id_2 = message("noid1", message_id=False), message("noid2", message_id=False)
    expected = {
        # forged stamps from the Internet
        send(
            p,
            OUTSIDE,
            "someone@ext.example",
            ["alice@corp.example"],
            message("nomac", "X-MailJournal-Stamp: v2; copy=x; to=alice@corp.example"),
        ): J_IN,
        send(
            p,
            OUTSIDE,
            "someone@ext.example",
            ["alice@corp.example"],
            message("v1", f"X-MailJournal-Stamp: {v1_stamp}"),
        ): J_IN,
        # a valid stamp lifted from the real report onto another message
        send(
            p,
            OUTSIDE,
            "someone@ext.example",
            ["alice@corp.example"],
            message("lifted", f"X-MailJournal-Stamp: {real_stamp}"),
        ): J_IN,
        # the real report, byte for byte, forwarded by a supervisor to an outside recipient
        send(p, TRUSTED, N_IN, ["auditor@outside.example"], real_report): J_OUT,
        # direction from the submitter: trusted client, external or null MAIL FROM, external
        # recipient -> outbound
        send(p, TRUSTED, "partner@ext.example", ["x@example.net"], message("extfrom")): J_OUT,
        send(p, TRUSTED, "", ["x@example.net"], message("nullfrom")): J_OUT,
        # an untrusted client spoofing an internal sender to an internal recipient -> inbound
        send(p, OUTSIDE, "ceo@corp.example", ["alice@corp.example"], message("spoofed")): J_IN,
        # no Message-ID: each gets one of ours
        send(p, OUTSIDE, "someone@ext.example", ["alice@corp.example"], no_id_1): J_IN,
        send(p, OUTSIDE, "someone@ext.example", ["alice@corp.example"], no_id_2): J_IN,
    }
    ids = list(expected)

    wait_until(
        lambda: set(ids) <= set(reports(smtp_capture)), 120, "a journal copy of every attack"
    )
    got = reports(smtp_capture)
    for event, journal in expected.items():
        assert [j for j, _ in got[event]] == [journal], (event, got[event])

    # the journaled originals are our prepended fields + the bytes as sent
    by_id = {e: attached_bytes(data) for e, [(_, data)] in got.items() if e in expected}
    assert_ours_then(by_id[ids[3]], real_report, event_id=ids[3])
    assert_ours_then(by_id[ids[-2]], no_id_1, event_id=ids[-2])
    assert_ours_then(by_id[ids[-1]], no_id_2, event_id=ids[-1])
    assert_ours_then(attached_bytes(real_report), first_sent, event_id=first)
    # the two originals without a Message-ID carry ours, derived from their event ids: distinct
    added = [selected_headers(split_ours(by_id[e])[0])["message_id"] for e in ids[-2:]]
    assert added == [f"<{e}@mx.corp.example>" for e in ids[-2:]]
    assert added[0] != added[1]

    audit = p.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
    assert "Traceback" not in audit.stderr
