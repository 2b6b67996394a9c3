"""Inline mode behind a real Postfix (docs/relay.md): Postfix's ``content_filter`` hands each
message to ingest, the relay sends the original back to Postfix's re-injection port, Postfix
delivers it (to a capture server standing in for the world) and mailjournal journals it.

Proven against a private Postfix: every original arrives once per recipient with its envelope
and its bytes (only trace fields added on top), each journal copy reaches its journal address,
nothing loops through the filter twice, and with Kafka down Postfix keeps the mail queued (ingest
answers 4xx) and delivers it once Kafka is back.
"""

from __future__ import annotations

import contextlib
import email
import smtplib
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.utils import format_datetime
from pathlib import Path

import pytest

from devtools.kafka_local import KafkaLocal
from mailjournal.config import Config
from mailjournal.topics import ensure_topics, topic_specs
from tests.fixtures.drain import wait_pipeline_drained, wait_relay_drained
from tests.fixtures.kafka import consume_all, delete_topics, kafka_test_config, unique_suffix
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.postfix import FilterPostfix
from tests.fixtures.smtp import Captured, CaptureServer, free_port, wait_until

pytestmark = pytest.mark.kafka

JOURNAL_IN = "journal-in@corp.example"
JOURNAL_OUT = "journal-out@corp.example"
JOURNALS = {JOURNAL_IN, JOURNAL_OUT}


@dataclass(frozen=True)
class Original:
    sender: str
    rcpts: list[str]  # the envelope: To, Cc and a Bcc (in no header)
    message_id: str
    raw: bytes  # as sent: CRLF lines, 8bit body, a line starting with a dot


def make_original(
    sender: str, to: list[str], cc: list[str], bcc: list[str], subject: str
) -> Original:
    mid = f"{time.time_ns()}.{subject.replace(' ', '-')}@test.example"
    lines = [
        f"From: {sender}",
        f"To: {', '.join(to)}",
        f"Cc: {', '.join(cc)}",
        f"Subject: {subject}",
        f"Date: {format_datetime(email.utils.localtime())}",
        f"Message-ID: <{mid}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "Grüße aus dem Test, über Postfix und zurück.",
        ".a line that starts with a dot (SMTP dot-stuffing both ways)",
        "",
        "-- ",
        "end",
    ]
    return Original(sender, [*to, *cc, *bcc], mid, "\r\n".join(lines).encode() + b"\r\n")


def send_to_postfix(port: int, o: Original) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        refused = smtp.sendmail(o.sender, o.rcpts, o.raw, mail_options=["BODY=8BITMIME"])
        assert refused == {}, refused


def split_trace(data: bytes) -> tuple[list[bytes], bytes]:
    """The ``Received:`` fields at the top of ``data`` (folded lines included) and the rest."""
    fields, pos = [], 0
    while data.startswith(b"Received:", pos):
        end = data.index(b"\r\n", pos)
        while data[end + 2 : end + 3] in (b" ", b"\t"):
            end = data.index(b"\r\n", end + 2)
        fields.append(data[pos : end + 2])
        pos = end + 2
    return fields, data[pos:]


def header(data: bytes, name: str) -> str | None:
    return email.message_from_bytes(data).get(name)


def originals_at(capture: CaptureServer, o: Original) -> list[Captured]:
    """Transactions of the original ``o`` (not journal copies) that reached the destination."""
    return [
        m
        for m in capture.messages
        if not JOURNALS & set(m.rcpt_tos) and header(m.data, "Message-ID") == f"<{o.message_id}>"
    ]


def journal_copies(capture: CaptureServer, o: Original, journal: str) -> list[Captured]:
    return [
        m for m in capture.messages if journal in m.rcpt_tos and o.message_id.encode() in m.data
    ]


def delivered_per_rcpt(capture: CaptureServer, o: Original) -> Counter[str]:
    return Counter(r for m in originals_at(capture, o) for r in m.rcpt_tos)


def assert_relayed_once_unchanged(capture: CaptureServer, o: Original, pf: FilterPostfix) -> None:
    assert delivered_per_rcpt(capture, o) == Counter(o.rcpts)  # each recipient exactly once
    for m in originals_at(capture, o):
        assert m.mail_from == o.sender
        trace, rest = split_trace(m.data)
        assert rest == o.raw, "the original's bytes changed on the way"
        # top down: Postfix re-injection, the relay (mailjournal), Postfix's receiving smtpd
        assert len(trace) == 3, trace
        assert b"(Postfix)" in trace[0]
        assert b"(mailjournal)" in trace[1]
        assert b"from client.test" in trace[2] and b"(Postfix)" in trace[2]


def report_recipients(data: bytes) -> set[str]:
    """The recipient lines (To:/Cc:/Bcc:/Recipient:) of a journal report's first part."""
    msg = email.message_from_bytes(data, policy=policy.default)
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    kinds = ("To: ", "Cc: ", "Bcc: ", "Recipient: ")
    return {line for line in part.get_content().splitlines() if line.startswith(kinds)}


def assert_journaled_once(
    capture: CaptureServer, o: Original, journal: str, recipients: set[str]
) -> None:
    """One journal copy of ``o`` at ``journal``, none elsewhere; its report lists ``recipients``
    (the envelope as journaled: a Bcc included)."""
    copies = journal_copies(capture, o, journal)
    assert len(copies) == 1, [c.rcpt_tos for c in copies]
    copy = copies[0]
    assert copy.rcpt_tos == [journal]
    assert header(copy.data, "X-MailJournal-Event-Id")
    assert report_recipients(copy.data) == recipients
    assert [other for j in JOURNALS - {journal} for other in journal_copies(capture, o, j)] == []


# -- setup ---------------------------------------------------------------------------------------


@dataclass
class Inline:
    config: Config
    pipeline: Pipeline
    postfix: FilterPostfix

    @property
    def filter_port(self) -> int:
        return self.postfix.filter_port


def settle(inline: Inline) -> None:
    """Every stage has committed past every record, then Postfix's queue is empty."""
    wait_pipeline_drained(inline.config, diagnose=inline.pipeline.problems)
    wait_relay_drained(inline.config)
    wait_until(inline.postfix.queue_empty, 30, "Postfix's queue empty")


def relay_ready(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/readyz"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)
    return False


@pytest.fixture
def inline_factory(
    tmp_path: Path,
    pipeline_factory: Callable[[Config], Pipeline],
    filter_postfix_factory: Callable[..., FilterPostfix],
) -> Iterator[Callable[..., Inline]]:
    """mailjournal (``mailjournal run``: ingest with the relay listener, journal, delivery to the
    capture server, the relay to Postfix's re-injection port) behind a private Postfix."""
    made: list[Config] = []

    def make(base: Config, capture: CaptureServer, **ingest: object) -> Inline:
        suffix = base.kafka.topics.messages.name.rsplit(".", 1)[-1]
        filter_port, reinject_port, postfix_port = free_port(), free_port(), free_port()
        hop = {"host": "127.0.0.1", "port": reinject_port}
        config = pipeline_config(
            base,
            capture.port,
            {
                "organization": {"trusted_networks": ["127.0.0.0/8"]},
                "ingest": {
                    "listeners": [
                        {
                            "name": "postfix-filter",
                            "host": "127.0.0.1",
                            "port": filter_port,
                            "role": "relay",
                            "relay": True,
                        }
                    ],
                    **ingest,
                },
                "relay": {"inbound": hop, "outbound": hop, "retry_delays_seconds": [0.5, 1.0]},
                "kafka": {
                    "relay_group": f"mailjournal-relay.{suffix}",
                    "topics": {"relay_retry": {"name": f"mailjournal.relay.retry.{suffix}"}},
                },
                "metrics": {"relay_port": free_port()},
            },
        )
        ensure_topics(config)  # the relay's retry tiers
        made.append(config)
        pipeline = pipeline_factory(config).start()
        wait_until(lambda: relay_ready(config.metrics.relay_port), 90, "relay ready")
        postfix = filter_postfix_factory(
            port=postfix_port,
            filter_port=filter_port,
            reinject_port=reinject_port,
            final_port=capture.port,
        )
        return Inline(config, pipeline, postfix)

    yield make
    for config in made:  # the relay tiers kafka_config's teardown does not know of
        delete_topics(config, [s.name for s in topic_specs(config) if ".relay.retry." in s.name])


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[KafkaLocal]:
    """A broker of this test's own: it is stopped and started again, which the session's
    broker, shared with other tests, must never be."""
    local = KafkaLocal(tmp_path / "kafka", brokers=1, die_with_parent=True)
    try:
        local.up(timeout=180)
        yield local
    finally:
        local.down()


# -- tests ---------------------------------------------------------------------------------------


def test_round_trip_through_postfix_content_filter(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    inline_factory: Callable[..., Inline],
) -> None:
    inline = inline_factory(kafka_config, smtp_capture)
    pf = inline.postfix
    inbound = make_original(
        "alice@ext.example",
        to=["bob@corp.example"],
        cc=["carol@corp.example"],
        bcc=["dave@corp.example"],
        subject="inbound via postfix",
    )
    outbound = make_original(
        "erin@corp.example",
        to=["frank@partner.example"],
        cc=["bob@corp.example"],
        bcc=["grace@ext.example"],
        subject="outbound via postfix",
    )
    for o in (inbound, outbound):
        send_to_postfix(pf.port, o)

    wait_until(
        lambda: (
            all(
                delivered_per_rcpt(smtp_capture, o) == Counter(o.rcpts) for o in (inbound, outbound)
            )
            and journal_copies(smtp_capture, inbound, JOURNAL_IN)
            and journal_copies(smtp_capture, outbound, JOURNAL_OUT)
        ),
        60,
        "originals and journal copies at the capture server",
    )
    # every stage done with every record, then Postfix done with what the relay handed back:
    # a duplicate or a second pass would have been sent before
    settle(inline)

    for o in (inbound, outbound):
        assert_relayed_once_unchanged(smtp_capture, o, pf)
    # inbound: every internal recipient (the Bcc as a plain envelope recipient); outbound: the
    # external ones (bob@corp.example would be internal journaling, off by default)
    inbound_report = {
        "To: bob@corp.example",
        "Cc: carol@corp.example",
        "Recipient: dave@corp.example",
    }
    assert_journaled_once(smtp_capture, inbound, JOURNAL_IN, inbound_report)
    assert_journaled_once(
        smtp_capture, outbound, JOURNAL_OUT, {"To: frank@partner.example", "Bcc: grace@ext.example"}
    )

    # no loop: each recipient went through the filter once, and ingest saw two messages
    all_rcpts = Counter(inbound.rcpts + outbound.rcpts)
    assert Counter(r for _, r in pf.deliveries(inline.filter_port)) == all_rcpts
    assert Counter(r for _, r in pf.deliveries(pf.final_port)) == all_rcpts
    messages = consume_all(inline.config, inline.config.kafka.topics.messages.name, min_count=2)
    assert len(messages) == 2
    assert "status=deferred" not in pf.maillog()


def test_kafka_down_postfix_keeps_the_mail_then_delivers(
    private_kafka: KafkaLocal,
    smtp_capture: CaptureServer,
    inline_factory: Callable[..., Inline],
) -> None:
    base = kafka_test_config(private_kafka.bootstrap, unique_suffix("postfix-kafka-down"))
    ensure_topics(base)
    # ingest gives up on Kafka (451) after 3 s; Postfix's smtp client waits far longer
    inline = inline_factory(base, smtp_capture, kafka_ack_timeout_seconds=3)
    pf = inline.postfix
    o = make_original(
        "alice@ext.example",
        to=["bob@corp.example"],
        cc=["carol@corp.example"],
        bcc=["dave@corp.example"],
        subject="queued while kafka is down",
    )

    private_kafka.kill_broker(1)
    send_to_postfix(pf.port, o)  # Postfix takes it (250) and queues it
    deferred = f"relay=127.0.0.1[127.0.0.1]:{inline.filter_port}"
    wait_until(
        lambda: any(
            deferred in line and "status=deferred" in line and " said: 451 4.3.0 " in line
            for line in pf.maillog().splitlines()
        ),
        60,
        "Postfix deferring the message on ingest's 4xx",
    )
    listing = pf.queue_listing()
    assert o.sender in listing and "bob@corp.example" in listing, listing
    assert originals_at(smtp_capture, o) == []

    private_kafka.start_broker(1)
    wait_until(
        lambda: (
            delivered_per_rcpt(smtp_capture, o) == Counter(o.rcpts)
            and journal_copies(smtp_capture, o, JOURNAL_IN)
        ),
        90,
        "delivery after Kafka is back",
    )
    settle(inline)
    assert_relayed_once_unchanged(smtp_capture, o, pf)
    assert_journaled_once(
        smtp_capture,
        o,
        JOURNAL_IN,
        {"To: bob@corp.example", "Cc: carol@corp.example", "Recipient: dave@corp.example"},
    )
    # the timed-out attempts were never published: one event, relayed and journaled once
    messages = consume_all(inline.config, inline.config.kafka.topics.messages.name, min_count=1)
    assert len(messages) == 1
    # through the filter once successfully; the deferrals were ingest's 4xx, not a loop
    assert Counter(r for _, r in pf.deliveries(inline.filter_port)) == Counter(o.rcpts)
    assert Counter(r for _, r in pf.deliveries(pf.final_port)) == Counter(o.rcpts)
