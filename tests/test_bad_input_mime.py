"""Broken real-world messages and international mail through the whole pipeline (issue #7).

Every message of ``tests/data/corpus/`` (see its README) goes through ``mailjournal run`` on the
session's Kafka twice: inbound (journal format ``report``) and outbound (format ``copy``), into a
capture smart host. For every case: ``250`` at ingest, the report's ``message/rfc822`` part and
the copy are byte for byte what ingest was given, no traceback in the stages' logs, nothing
dead-lettered, and ``mailjournal audit`` finds zero gaps.

What "what ingest was given" means, exactly: the DATA content after dot-unstuffing (RFC 5321
§4.5.2), with the CRLF every client must add before the terminator when the message does not end
with one. Messages with CRLF lines go through ``smtplib`` (``sendmail`` with bytes: no line-ending
rewriting, dots doubled at line starts, ``BODY=8BITMIME`` / ``SMTPUTF8`` as the content needs).
Messages with bare CR or LF go over a raw socket that doubles dots only after a real CRLF; this
pipeline runs with ``ingest.bare_newline = "normalize"`` (the default ``reject`` refuses them,
see test_ingest_security.py), so each bare CR or LF is expected as CRLF. Lines past 998 octets
need ``ingest.max_line_length`` raised and a smart host that takes long lines (Postfix does;
aiosmtpd's default refuses lines over 1,001 octets).

International mail: SMTPUTF8 envelopes with UTF-8 local parts and domains (an accepted domain in
UTF-8 too), journaled per direction; copies to a UTF-8 journal address go out with SMTPUTF8. With
a smart host that does not offer SMTPUTF8, a report of a UTF-8 original needs only 8BITMIME; a
``copy`` with UTF-8 header fields and a copy to a UTF-8 journal address cannot be sent, fail
permanently and are NDR'd to the direction's NDR address with the reason (5.6.9 / 5.6.7).
"""

from __future__ import annotations

import contextlib
import quopri
import re
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest

from mailjournal.config import Config
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.outcomes import ResultClass
from mailjournal.topics import ensure_topics
from tests.fixtures.config import make_config
from tests.fixtures.ingest import RawSMTP
from tests.fixtures.kafka import consume_all, delete_topics, kafka_test_config, unique_suffix
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import Captured, CaptureServer, wait_until
from tests.fixtures.trace import after_ours, assert_ours_then

pytestmark = pytest.mark.kafka

CORPUS = Path(__file__).parent / "data" / "corpus"
CASES = sorted(p.name for p in CORPUS.glob("*.eml"))

JOURNAL_IN, NDR_IN = "journal-in@corp.example", "journal-ndr-in@corp.example"
JOURNAL_OUT, NDR_OUT = "journal-out@corp.example", "journal-ndr-out@corp.example"
JOURNAL_INT, NDR_INT = "jörnal@corp.example", "journal-ndr-int@corp.example"
UTF8_DOMAIN = "köln.example"  # an accepted domain in UTF-8 (A-label: xn--kln-sna.example)

# envelopes: (sender, recipient) for ASCII content and for content that needs SMTPUTF8
INBOUND = {
    False: ("partner@ext.example", "user@corp.example"),
    True: ("jörg@bücher.example", "zoë@corp.example"),
}
OUTBOUND = {
    False: ("alice@corp.example", "customer@ext.example"),
    True: ("jörg@corp.example", "zoë@bücher.example"),
}

LONG_LINES = 1024 * 1024  # ingest and smart host: the corpus has a 200,000-octet line


def pipeline_overrides() -> dict[str, Any]:
    return {
        "organization": {
            "accepted_domains": ["corp.example", UTF8_DOMAIN],
            "trusted_networks": ["127.0.0.0/8"],  # the test client submits outbound mail
        },
        "ingest": {"bare_newline": "normalize", "max_line_length": LONG_LINES},
        "journal": {
            "inbound": {"address": JOURNAL_IN, "ndr_address": NDR_IN, "format": "report"},
            "outbound": {"address": JOURNAL_OUT, "ndr_address": NDR_OUT, "format": "copy"},
            "internal": {
                "enabled": True,
                "address": JOURNAL_INT,
                "ndr_address": NDR_INT,
                "format": "report",
            },
        },
    }


# -- what goes on the wire, and what must come out ------------------------------------------------


def has_bare_eol(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf


def has_utf8_headers(data: bytes) -> bool:
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    if head.isascii():
        return False
    with contextlib.suppress(UnicodeDecodeError):
        head.decode("utf-8")
        return True
    return False


def expected_original(data: bytes) -> bytes:
    """What ingest stores for ``data``: the DATA content after unstuffing, the CRLF before the
    terminator added when missing, each bare CR or LF made CRLF (``bare_newline = normalize``)."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def mail_options(data: bytes) -> list[str]:
    options = [] if data.isascii() else ["BODY=8BITMIME"]
    return options + (["SMTPUTF8"] if has_utf8_headers(data) else [])


def send(port: int, sender: str, rcpts: list[str], data: bytes, options: list[str]) -> str:
    """One transaction; the event id of the 250 reply. smtplib for CRLF messages, a raw socket
    (dots doubled only after a real CRLF) for bare CR/LF ones."""
    if has_bare_eol(data):
        payload = data if data.endswith(b"\r\n") else data + b"\r\n"
        stuffed = (b"." if payload.startswith(b".") else b"") + payload.replace(b"\r\n.", b"\r\n..")
        with RawSMTP(port) as c:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO client.test")[0] == 250
            mail = f"MAIL FROM:<{sender}>" + "".join(f" {o}" for o in options)
            assert c.cmd(mail.encode())[0] == 250
            for rcpt in rcpts:
                assert c.cmd(f"RCPT TO:<{rcpt}>".encode())[0] == 250
            assert c.cmd("DATA")[0] == 354
            code, text = c.cmd(stuffed + b".")
            c.cmd("QUIT")
    else:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            assert smtp.mail(sender, options)[0] == 250
            for rcpt in rcpts:
                assert smtp.rcpt(rcpt)[0] == 250, rcpt
            code, reply = smtp.data(data)
            text = reply.decode()
    assert code == 250, (code, text)
    return text.rsplit(" ", 1)[-1]


def report_parts(data: bytes) -> tuple[Message, list[tuple[Message, bytes]]]:
    """The top-level header fields and the (headers, body) of each part of a journal report,
    split by its boundary without re-parsing (a MIME library may rewrite what it reads)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no header/body separator"
    parser = BytesHeaderParser(policy=compat32)
    headers = parser.parsebytes(head + sep)
    boundary = headers.get_param("boundary")
    assert isinstance(boundary, str), headers.get("Content-Type")
    delim = b"--" + boundary.encode("ascii")
    close = b"\r\n" + delim + b"--\r\n"
    assert body.startswith(delim + b"\r\n") and body.endswith(close)
    parts = []
    for part in body[len(delim) + 2 : -len(close)].split(b"\r\n" + delim + b"\r\n"):
        phead, psep, pbody = part.partition(b"\r\n\r\n")
        parts.append((parser.parsebytes(phead + psep), pbody))
    return headers, parts


def attached(data: bytes, content_type: str) -> bytes:
    (body,) = [b for h, b in report_parts(data)[1] if h.get_content_type() == content_type]
    return body


def report_text(data: bytes) -> list[str]:
    (text,) = [b for h, b in report_parts(data)[1] if h.get_content_type() == "text/plain"]
    return quopri.decodestring(text).decode("utf-8").splitlines()


def event_of(m: Captured) -> str | None:
    head = m.data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    value = BytesHeaderParser(policy=compat32).parsebytes(head).get("X-MailJournal-Event-Id")
    return str(value) if value else None


# -- the shared pipeline ------------------------------------------------------------------------


@dataclass
class Sent:
    name: str
    direction: str  # inbound, outbound, internal
    sender: str
    rcpt: str
    data: bytes
    options: list[str]
    event_id: str = ""

    @property
    def expected(self) -> bytes:
        return expected_original(self.data)


@dataclass
class Run:
    pipeline: Pipeline
    capture: CaptureServer
    config: Config
    sent: dict[tuple[str, str], Sent] = field(default_factory=dict)

    def report_for(self, s: Sent, journal: str) -> Captured | None:
        got = [m for m in self.capture.messages_to(journal) if event_of(m) == s.event_id]
        assert len(got) <= 1, f"{len(got)} reports for {s.name}"
        return got[0] if got else None

    def copy_for(self, s: Sent, journal: str = JOURNAL_OUT) -> Captured | None:
        got = [m for m in self.capture.messages_to(journal) if after_ours(m.data) == s.expected]
        assert len(got) <= 1, f"{len(got)} copies of {s.name}"
        return got[0] if got else None

    def arrived(self, s: Sent) -> bool:
        if s.direction == "outbound":
            return self.copy_for(s) is not None
        return (
            self.report_for(s, JOURNAL_INT if s.direction == "internal" else JOURNAL_IN) is not None
        )


@contextlib.contextmanager
def running_pipeline(
    kafka_bootstrap: str, workdir: Path, label: str, **capture_options: Any
) -> Iterator[Run]:
    """A pipeline on its own topics (deleted afterwards) delivering to a capture smart host."""
    config = kafka_test_config(kafka_bootstrap, unique_suffix(label))
    assert not ensure_topics(config).has_drift
    capture = CaptureServer(line_length_limit=LONG_LINES, **capture_options).start()
    p = Pipeline(pipeline_config(config, capture.port, pipeline_overrides()), workdir)
    try:
        p.start()
        yield Run(p, capture, p.config)
    finally:
        p.stop()
        capture.stop()
        delete_topics(config)


INTERNATIONAL = "29-utf8-headers.eml"


@pytest.fixture(scope="module")
def corpus_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Every corpus case inbound and outbound, plus the international envelopes, through one
    pipeline; waits (bounded) for every copy, then hands the run to the tests."""
    with running_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("corpus"), "mime") as run:
        port = run.pipeline.smtp_port
        todo: list[Sent] = []
        for name in CASES:
            data = (CORPUS / name).read_bytes()
            options = mail_options(data)
            for direction, envelopes in (("inbound", INBOUND), ("outbound", OUTBOUND)):
                sender, rcpt = envelopes["SMTPUTF8" in options]
                todo.append(Sent(name, direction, sender, rcpt, data, options))
        intl = (CORPUS / INTERNATIONAL).read_bytes()
        options = mail_options(intl)
        # an inbound message to a recipient in the UTF-8 accepted domain
        todo.append(
            Sent(
                "utf8-domain",
                "inbound",
                "jörg@bücher.example",
                f"anna@{UTF8_DOMAIN}",
                intl,
                options,
            )
        )
        # internal mail: its journal address is UTF-8, so its copy needs SMTPUTF8
        todo.append(
            Sent(
                "utf8-journal",
                "internal",
                "jörg@corp.example",
                f"anna@{UTF8_DOMAIN}",
                intl,
                options,
            )
        )
        for s in todo:
            s.event_id = send(port, s.sender, [s.rcpt], s.data, s.options)
            run.sent[(s.name, s.direction)] = s
        # the last message sent arriving is the proof no partition is stuck behind a broken one
        with contextlib.suppress(AssertionError):
            wait_until(lambda: all(run.arrived(s) for s in todo), 120, "every journal copy")
        yield run


def sent_case(run: Run, name: str, direction: str) -> Sent:
    return run.sent[(name, direction)]


@pytest.mark.parametrize("name", CASES)
def test_report_attaches_the_original_byte_for_byte(corpus_run: Run, name: str) -> None:
    s = sent_case(corpus_run, name, "inbound")
    got = corpus_run.report_for(s, JOURNAL_IN)
    assert got is not None, f"no journal report for {name}:\n{corpus_run.pipeline.log_tail()}"
    assert got.mail_from == NDR_IN
    headers, _ = report_parts(got.data)
    assert "X-MS-Journal-Report" in headers
    assert headers.get_content_type() == "multipart/mixed"
    assert_ours_then(attached(got.data, "message/rfc822"), s.expected, event_id=s.event_id)
    lines = report_text(got.data)
    assert lines[0] == f"Sender: {s.sender}"
    # To/Cc/Bcc by the original's header fields (however broken), Recipient when it names none
    assert {f"{kind}: {s.rcpt}" for kind in ("To", "Cc", "Bcc", "Recipient")} & set(lines[3:])
    # the report's own header fields stay ASCII: the copy needs SMTPUTF8 only for its envelope
    assert got.data.partition(b"\r\n\r\n")[0].isascii()
    assert "SMTPUTF8" not in got.mail_options
    assert ("BODY=8BITMIME" in got.mail_options) == (not got.data.isascii())


@pytest.mark.parametrize("name", CASES)
def test_copy_is_the_original_byte_for_byte(corpus_run: Run, name: str) -> None:
    s = sent_case(corpus_run, name, "outbound")
    got = corpus_run.copy_for(s)
    if got is None:
        sizes = sorted(len(m.data) for m in corpus_run.capture.messages_to(JOURNAL_OUT))
        pytest.fail(
            f"no copy equal to the {len(s.expected)}-byte original of {name} (copies: {sizes})"
        )
    assert_ours_then(got.data, s.expected, event_id=s.event_id)
    assert got.mail_from == NDR_OUT
    assert ("BODY=8BITMIME" in got.mail_options) == (not s.expected.isascii())
    # a copy with UTF-8 header fields is an internationalised message (RFC 6531 §3.4)
    assert ("SMTPUTF8" in got.mail_options) == has_utf8_headers(s.expected)


def test_smart_host_advertises_smtputf8_and_utf8_envelopes_are_journaled(corpus_run: Run) -> None:
    run = corpus_run
    with smtplib.SMTP(run.capture.host, run.capture.port, timeout=10) as smtp:
        smtp.ehlo("probe.test")
        assert smtp.has_extn("smtputf8") and smtp.has_extn("8bitmime")

    inbound = sent_case(run, "utf8-domain", "inbound")
    report = run.report_for(inbound, JOURNAL_IN)
    assert report is not None, "the recipient in the UTF-8 accepted domain was not journaled"
    assert_ours_then(attached(report.data, "message/rfc822"), inbound.expected)
    lines = report_text(report.data)
    assert lines[0] == "Sender: jörg@bücher.example"
    assert f"Recipient: anna@{UTF8_DOMAIN}" in lines  # the To: field names zoë

    internal = sent_case(run, "utf8-journal", "internal")
    report = run.report_for(internal, JOURNAL_INT)
    assert report is not None, "no internal report to the UTF-8 journal address"
    assert report.rcpt_tos == [JOURNAL_INT] and report.mail_from == NDR_INT
    assert "SMTPUTF8" in report.mail_options and "BODY=8BITMIME" in report.mail_options
    assert_ours_then(attached(report.data, "message/rfc822"), internal.expected)

    # the outbound copy of mail to a recipient in a UTF-8 external domain
    outbound = sent_case(run, INTERNATIONAL, "outbound")
    assert outbound.rcpt == "zoë@bücher.example"
    copy = run.copy_for(outbound)
    assert copy is not None and "SMTPUTF8" in copy.mail_options


def test_the_run_leaves_no_gap_no_dead_letter_no_traceback(corpus_run: Run) -> None:
    run = corpus_run
    missing = [f"{s.name} ({s.direction})" for s in run.sent.values() if not run.arrived(s)]
    assert not missing, f"not delivered: {missing}\n{run.pipeline.log_tail()}"
    ndr_addresses = {NDR_IN, NDR_OUT, NDR_INT}
    assert not [m for m in run.capture.messages if set(m.rcpt_tos) & ndr_addresses]
    dead = consume_all(run.config, run.config.kafka.topics.dead_letters.name, timeout=30)
    assert dead == [], [d.key() for d in dead]
    log = run.pipeline.log_file.read_text(errors="replace")
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000) :][:6000]
    audit = run.pipeline.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
    assert f"messages in window: {len(run.sent)}" in audit.stdout


def test_recipient_in_the_a_label_form_of_a_utf8_accepted_domain_is_internal(
    corpus_run: Run,
) -> None:
    """``anna@xn--kln-sna.example`` and ``anna@köln.example`` are one mailbox (RFC 5890): the
    ASCII form of an accepted domain must be internal too, for journaling and relay control."""
    run = corpus_run
    org = run.config.organization
    assert org.is_internal_address(f"anna@{UTF8_DOMAIN}")
    assert org.is_internal_address("anna@xn--kln-sna.example")
    data = (CORPUS / "01-no-message-id.eml").read_bytes().replace(b"no Message-ID", b"A-label")
    s = Sent("a-label", "inbound", "partner@ext.example", "anna@xn--kln-sna.example", data, [])
    s.event_id = send(run.pipeline.smtp_port, s.sender, [s.rcpt], s.data, [])
    run.sent[(s.name, s.direction)] = s
    try:
        wait_until(lambda: run.report_for(s, JOURNAL_IN), 15, "the report for the A-label")
    finally:
        del run.sent[(s.name, s.direction)]  # keep the audit's message count to the corpus


# -- a smart host without SMTPUTF8 ----------------------------------------------------------------


def test_smart_host_without_smtputf8_gets_reports_and_the_rest_is_ndrd_with_the_reason(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    intl = (CORPUS / INTERNATIONAL).read_bytes()
    eight_bit = (CORPUS / "12-8bit-body-without-mime.eml").read_bytes()
    ascii_mail = (CORPUS / "02-no-date.eml").read_bytes()
    with running_pipeline(kafka_bootstrap, tmp_path, "no-smtputf8", smtputf8=False) as run:
        with smtplib.SMTP(run.capture.host, run.capture.port, timeout=10) as probe:
            probe.ehlo("probe.test")
            assert not probe.has_extn("smtputf8") and probe.has_extn("8bitmime")
        port = run.pipeline.smtp_port
        cases = [
            # a report of a UTF-8 original: ASCII envelope and report headers, only 8BITMIME
            Sent("report", "inbound", *INBOUND[True], intl, mail_options(intl)),
            # a copy with UTF-8 header fields needs SMTPUTF8: permanent failure, NDR
            Sent("copy-utf8", "outbound", *OUTBOUND[True], intl, mail_options(intl)),
            # a copy with a legacy 8-bit body and ASCII headers needs only 8BITMIME
            Sent("copy-8bit", "outbound", *OUTBOUND[False], eight_bit, mail_options(eight_bit)),
            # a UTF-8 journal address cannot be a RCPT without SMTPUTF8: NDR
            Sent("utf8-rcpt", "internal", "alice@corp.example", "bob@corp.example", ascii_mail, []),
        ]
        for s in cases:
            s.event_id = send(port, s.sender, [s.rcpt], s.data, s.options)
        report, copy_utf8, copy_8bit, utf8_rcpt = cases
        capture = run.capture

        def ndr_about(s: Sent, ndr_address: str) -> Captured | None:
            for m in capture.messages_to(ndr_address):
                if event_of(m) == s.event_id:
                    return m
            return None

        wait_until(
            lambda: (
                run.report_for(report, JOURNAL_IN)
                and run.copy_for(copy_8bit)
                and ndr_about(copy_utf8, NDR_OUT)
                and ndr_about(utf8_rcpt, NDR_INT)
            ),
            90,
            "the report, the 8-bit copy and two NDRs",
        )
        got = run.report_for(report, JOURNAL_IN)
        assert got is not None
        assert "SMTPUTF8" not in got.mail_options and "BODY=8BITMIME" in got.mail_options
        assert_ours_then(attached(got.data, "message/rfc822"), report.expected)
        got = run.copy_for(copy_8bit)
        assert got is not None and "BODY=8BITMIME" in got.mail_options
        assert "SMTPUTF8" not in got.mail_options

        for s, ndr_address, status, reason in (
            (copy_utf8, NDR_OUT, "5.6.9", "UTF-8 header fields"),
            (utf8_rcpt, NDR_INT, "5.6.7", "non-ASCII address"),
        ):
            ndr = ndr_about(s, ndr_address)
            assert ndr is not None and ndr.mail_from == ""
            assert "SMTPUTF8" not in ndr.mail_options
            text = attached(ndr.data, "message/delivery-status").decode()
            assert f"Status: {status}" in text, text
            assert "Action: failed" in text and reason in text and "SMTPUTF8" in text
            assert "\n".join(report_text(ndr.data)).count("does not offer SMTPUTF8") == 1
        # the failed copy is returned whole: nothing of it is lost
        returned = ndr_about(copy_utf8, NDR_OUT)
        assert returned is not None
        assert_ours_then(attached(returned.data, "message/rfc822"), copy_utf8.expected)
        # never sent in a form the smart host did not agree to
        assert run.copy_for(copy_utf8) is None and not capture.messages_to(JOURNAL_INT)
        assert all(a.isascii() for m in capture.messages for a in (m.mail_from, *m.rcpt_tos))

        log = run.pipeline.log_file.read_text(errors="replace")
        assert "Traceback" not in log
        audit = run.pipeline.audit("--grace", "1")
        assert audit.returncode == 0 and "gaps: 0" in audit.stdout, audit.stdout + audit.stderr


def test_eight_bit_content_is_not_sent_to_a_smart_host_without_8bitmime(
    smtp_capture_factory: Callable[..., CaptureServer],
) -> None:
    """RFC 6152 §3: without 8BITMIME a client must convert or fail; an archive copy must not be
    converted, so it fails permanently (and is NDR'd) before any command is sent."""
    server = smtp_capture_factory(eightbitmime=False)
    cfg = make_config(
        {"delivery": {"smart_host": {"host": "127.0.0.1", "port": server.port}}}
    ).delivery
    client = SmtpClient(cfg, local_hostname="deliver.test")
    try:
        eight_bit = (CORPUS / "12-8bit-body-without-mime.eml").read_bytes()
        result = client.send(NDR_IN, JOURNAL_IN, eight_bit)
        assert result.result_class is ResultClass.PERMANENT
        assert (result.code, result.text.split()[0]) == (554, "5.6.3")
        assert "8BITMIME" in result.text
        assert not [verb for _, verb in server.commands if verb == "MAIL"]
        ascii_mail = (CORPUS / "02-no-date.eml").read_bytes()
        assert client.send(NDR_IN, JOURNAL_IN, ascii_mail).result_class is ResultClass.DELIVERED
        (got,) = server.messages
        assert got.data == ascii_mail and "BODY=8BITMIME" not in got.mail_options
    finally:
        client.close()


def test_report_names_a_subject_written_with_blanks_before_the_colon(corpus_run: Run) -> None:
    """``Subject : text`` is a Subject field in RFC 5322's obsolete syntax (§4.5.3, obs-subject =
    "Subject" *WSP ":" unstructured), which real mail still carries: the report must name it."""
    s = sent_case(corpus_run, "05-header-without-colon.eml", "inbound")
    got = corpus_run.report_for(s, JOURNAL_IN)
    assert got is not None
    assert report_text(got.data)[1] == "Subject: space before the colon"
