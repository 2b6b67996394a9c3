"""Evasion through the whole pipeline (issue 13): header fields that made the journal worker or
the report builder raise are accepted (250), journaled and delivered, the audit finds no gap and
no stage prints a traceback; a record on the messages topic that is no readable MessageReceived
is named by the audit (topic, partition, offset) with exit status 1, again without a traceback.

``mailjournal run`` on the session's real Kafka, a capture SMTP server as smart host."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Callable
from email import policy

import pytest
from confluent_kafka import TopicPartition

from mailjournal.config import Config
from mailjournal.kafka import make_consumer, make_producer
from tests.fixtures.kafka import unique_suffix
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import Captured, CaptureServer, wait_until
from tests.fixtures.trace import assert_ours_then

pytestmark = pytest.mark.kafka

JOURNAL_IN = "journal-in@corp.example"


def folded(tokens: list[str], per_line: int = 200) -> str:
    """Tokens joined by blanks, folded every ``per_line`` tokens (lines stay under 998)."""
    lines = [" ".join(tokens[i : i + per_line]) for i in range(0, len(tokens), per_line)]
    return "\r\n ".join(lines)


# getaddresses raises RecursionError on these (nested comments, nested groups)
RECURSIVE_TO = folded(["("] * 3000 + ["bob@corp.example"])
RECURSIVE_CC = folded(["g:"] * 3000 + ["bob@corp.example;"])
# an all-ASCII encoded word decoding to a lone surrogate (UTF-7 "+2AA-" is U+D800)
SURROGATE_SUBJECT = "=?utf-7?q?+2AA-?= =?unicode-escape?q?=5Cud800?="


def raw_message(to: str, subject: str, cc: str | None = None, marker: str = "") -> bytes:
    lines = [
        "From: Partner <partner@ext.example>",
        f"To: {to}",
        *([f"Cc: {cc}"] if cc else []),
        f"Subject: {subject}",
        f"Message-ID: <{unique_suffix('evasion')}@ext.example>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    return ("\r\n".join(lines) + f"\r\n\r\nbody {marker}\r\n").encode("ascii")


def send_raw(port: int, sender: str, rcpts: list[str], data: bytes) -> str:
    """DATA as given; the event id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        code, reply = smtp.mail(sender)
        assert code == 250, (code, reply)
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, code, reply)
        code, reply = smtp.data(data)
    assert code == 250, (code, reply)
    return reply.decode().rsplit(" ", 1)[-1]


def journal_copy_for(capture: CaptureServer, event_id: str) -> Captured | None:
    for m in capture.messages_to(JOURNAL_IN):
        if (
            email.message_from_bytes(m.data, policy=policy.compat32).get("X-MailJournal-Event-Id")
            == event_id
        ):
            return m
    return None


def attached_original(data: bytes) -> bytes:
    """The message/rfc822 part's body bytes, exactly (the report's last part)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    boundary = head.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    part = data.split(b"--" + boundary + b"\r\nContent-Type: message/rfc822\r\n", 1)[1]
    body = part.split(b"\r\n\r\n", 1)[1]
    return body[: body.rindex(b"\r\n--" + boundary + b"--")]


def test_hostile_headers_are_journaled_and_audited_and_poison_is_named(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    config = pipeline_config(kafka_config, smtp_capture.port)
    p = pipeline_factory(config).start()
    cases = {
        "recursive To": raw_message(RECURSIVE_TO, "nested comments", marker="1"),
        "recursive Cc": raw_message("x@ext.example", "nested groups", RECURSIVE_CC, marker="2"),
        "surrogate Subject": raw_message("bob@corp.example", SURROGATE_SUBJECT, marker="3"),
        "both": raw_message(RECURSIVE_TO, SURROGATE_SUBJECT, RECURSIVE_CC, marker="4"),
    }
    sent = {
        name: send_raw(p.smtp_port, "partner@ext.example", ["bob@corp.example"], data)
        for name, data in cases.items()
    }
    for name, event_id in sent.items():
        got = wait_until(
            lambda e=event_id: journal_copy_for(smtp_capture, e), 60, f"the copy of {name}"
        )
        data = got.data
        # the report (or, had it failed to build, the original itself as a copy)
        original = attached_original(data) if b"X-MS-Journal-Report:" in data else data
        assert_ours_then(original, cases[name], event_id=event_id)  # byte-exact after ours
        if b"X-MS-Journal-Report:" in data:
            text = data.split(b"Content-Type: text/plain; charset=utf-8\r\n", 1)[1]
            assert b"Recipient: bob@corp.example" in text or b"To: bob@corp.example" in text
    # the recipients of the unparsable fields could not be typed from them: Recipient:
    for name in ("recursive To", "both"):
        got = journal_copy_for(smtp_capture, sent[name])
        assert got is not None and b"Recipient: bob@corp.example" in got.data

    log = p.log_file.read_text(errors="replace")
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000) :][:6000]
    audit = wait_until(
        lambda: (a := p.audit("--grace", "2")).returncode == 0 and a,
        60,
        "the audit to find every copy delivered",
    )
    assert "gaps: 0" in audit.stdout and f"messages in window: {len(sent)}" in audit.stdout
    assert "Traceback" not in audit.stderr

    # a record on the messages topic that is no MessageReceived at all
    topic = config.kafka.topics.messages.name
    producer = make_producer(config, role="test-ingest")
    where: list[tuple[int, int]] = []

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        where.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    producer.produce(topic, b"\x00garbage that no schema reads", b"poison", callback=delivered)
    assert producer.flush(30) == 0
    ((partition, offset),) = where
    audit = p.audit("--grace", "2")
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert f"GAP unreadable: unreadable record {topic}[{partition}]@{offset}" in audit.stdout
    assert "gaps: 1" in audit.stdout
    assert "Traceback" not in audit.stdout + audit.stderr
    # the worker dead-lettered it and went on, without a traceback
    consumer = make_consumer(config, f"probe-{unique_suffix()}", role="test-reader")
    try:
        dlq = config.kafka.topics.dead_letters.name
        wait_until(
            lambda: any(
                consumer.get_watermark_offsets(TopicPartition(dlq, n), timeout=10)[1] > 0
                for n in range(config.kafka.topics.dead_letters.partitions)
            ),
            60,
            "the dead letter",
        )
    finally:
        consumer.close()
    assert "Traceback" not in p.log_file.read_text(errors="replace")
