"""Property-based tests of the messages delivery builds (delivery/report.py, delivery/ndr.py).

Hostile copy records: originals of any bytes (8-bit, NUL, bare CR/LF, lines past 998 octets,
broken MIME), subjects, senders, Message-IDs, recipient addresses and server replies with CR/LF
injection attempts, controls, non-ASCII and encoded-words; SMTPUTF8 journal addresses.

The attached original is cut out of the report bytes without the module's help: the boundary is
the one Python's parser reads from the top-level Content-Type; the part's body starts after the
first empty line following ``--boundary CRLF Content-Type: message/rfc822`` and ends at the CRLF
that precedes the closing ``--boundary--`` (RFC 2046 §5.1.1: that CRLF belongs to the
delimiter). The boundary never occurs in the original, so the first closing delimiter after the
body start is the real one.
"""

from __future__ import annotations

import contextlib
import email
from email import policy
from email.message import EmailMessage
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.ndr import build_ndr
from delivery.report import build_message, build_report, outgoing_message
from ingest.headers import selected_headers
from mailjournal import mime
from mailjournal.config import Config
from mailjournal.dsn import Failure, diagnostic_code
from mailjournal.mime import MAX_LINE, header_block
from mailjournal.smtp.wire import has_long_line
from schemas import JOURNAL_COPY, decode, encode
from schemas.events import JournalCopyKind, JournalSource, ReportFormat
from schemas.records import journal_copy
from tests.fixtures.config import PREVIOUS_STAMP_KEY_FILE, make_config
from tests.strategies import (
    EXTERNAL_DOMAINS,
    address,
    arbitrary_message,
    garbage_address,
    hostile_text,
)
from tests.test_delivery_report import EXPECTED_REPORT_HEADERS

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REPORT_HEADERS = EXPECTED_REPORT_HEADERS
NDR_HEADERS = [h for h in REPORT_HEADERS if h != "X-MS-Journal-Report"] + [
    "X-MailJournal-About-Copy-Id"
]
PART_HEADERS = ["Content-Type", "Content-Transfer-Encoding"]
RECIPIENT_PREFIX = {"TO": "To", "CC": "Cc", "BCC": "Bcc", "RECIPIENT": "Recipient"}

CONFIGS = {
    (secret, sender): make_config(
        {
            "journal": {"sender": sender, **({"stamp_secret_file": secret} if secret else {})},
            "delivery": {"reporting_mta": "gw1.corp.example", "ndr_attach_max_bytes": 2048},
        }
    )
    for secret in (None, str(PREVIOUS_STAMP_KEY_FILE))
    for sender in ("mailjournal@corp.example", "jörnal-bot@corp.example")
}

mailbox = address(st.sampled_from(["corp.example", *EXTERNAL_DOMAINS]))
recipient = st.fixed_dictionaries(
    {
        "address": st.one_of(mailbox, garbage_address()),
        "type": st.sampled_from(["TO", "CC", "BCC", "RECIPIENT", "bogus"]),
        "expanded": st.one_of(st.none(), hostile_text(3)),
        "forwarded": st.one_of(st.none(), hostile_text(3)),
    }
)


@st.composite
def copies(draw: st.DrawFn) -> tuple[dict[str, Any], Config]:
    event_id = draw(st.sampled_from(["01J0EVENT", "01J0EVENT-2"]))
    journal = draw(mailbox)
    config = CONFIGS[
        (
            draw(st.sampled_from([None, str(PREVIOUS_STAMP_KEY_FILE)])),
            draw(st.sampled_from(sorted({s for _, s in CONFIGS}))),
        )
    ]
    original = draw(arbitrary_message())
    # as the journal worker fills them: read from the original by ingest, or anything at all
    read = selected_headers(original)
    subject = draw(st.one_of(st.just(read["subject"]), st.none(), hostile_text()))
    message_id = draw(st.one_of(st.just(read["message_id"]), st.none(), hostile_text(3)))
    record = dict(
        journal_copy(
            copy_id=f"{event_id}.{draw(st.sampled_from(['0123456789abcdef', 'fedcba9876543210.ab12cd34']))}",
            event_id=event_id,
            kind=JournalCopyKind.JOURNAL,
            received_at=draw(st.integers(min_value=0, max_value=4_000_000_000_000)),
            directions=draw(
                st.lists(
                    st.sampled_from(["INBOUND", "OUTBOUND", "INTERNAL"]), max_size=3, unique=True
                )
            ),
            sources=[JournalSource.GLOBAL],
            journal_address=journal,
            ndr_address=draw(mailbox),
            format=ReportFormat.REPORT,
            original_sender=draw(st.one_of(st.just(""), mailbox, hostile_text(3))),
            recipients=draw(st.lists(recipient, max_size=5)),
            message_id=message_id,
            subject=subject,
            original=original,
        )
    )
    return record, config


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def attachment_span(data: bytes, boundary: str, content_type: bytes) -> tuple[int, int]:
    """(start, end) of the body of the part of ``content_type``: see the module docstring."""
    head = b"--" + boundary.encode() + b"\r\nContent-Type: " + content_type + b"\r\n"
    start = data.index(b"\r\n\r\n", data.index(head)) + 4
    end = data.index(b"\r\n--" + boundary.encode() + b"--\r\n", start)
    return start, end


def assert_our_lines_are_clean(data: bytes, start: int, end: int) -> None:
    """Every line outside the attachment ends with CRLF and is at most 998 octets long (RFC 5322
    §2.1.1), whatever the attachment holds."""
    for chunk in (data[:start], data[end:]):
        assert chunk.endswith(b"\r\n")
        lines = chunk.split(b"\r\n")[:-1]
        for line in lines:
            assert b"\r" not in line and b"\n" not in line, line[:80]
            assert len(line) <= MAX_LINE, (len(line), line[:80])


def text_lines(part: EmailMessage) -> list[str]:
    """The text part as a reader sees it: decoded, split at every line break Python knows."""
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    return body.decode("utf-8").splitlines()


def assert_headers_safe(msg: EmailMessage, expected: list[str]) -> None:
    assert [k for k, _ in msg.items()] == expected  # nothing injected, nothing missing
    assert not msg.defects
    for name in ("Bcc", "Cc", "X-Injected", "Received"):
        assert msg.get_all(name) is None
    for value in msg.values():
        assert "\r" not in str(value) and "\n" not in str(value)


@SETTINGS
@given(copies())
def test_report_is_well_formed_and_carries_the_original_unaltered(arg: Any) -> None:
    record, config = arg
    original: bytes = record["original"]
    data = build_report(record, config)
    assert build_report(record, config) == data  # a duplicate send is byte-identical

    msg = parse(data)
    assert_headers_safe(msg, REPORT_HEADERS)
    assert msg.get_content_type() == "multipart/mixed"
    boundary = msg.get_boundary()
    assert boundary and ("--" + boundary).encode() not in original
    text, attached = msg.get_payload()
    assert [k for k, _ in text.items()] == PART_HEADERS
    assert [k for k, _ in attached.items()] == PART_HEADERS
    assert text.get_content_type() == "text/plain"
    assert attached.get_content_type() == "message/rfc822"

    start, end = attachment_span(data, boundary, b"message/rfc822")
    assert data[start:end] == original  # byte for byte
    assert_our_lines_are_clean(data, start, end)

    # the header section is 7-bit unless an address needs SMTPUTF8 (RFC 6532)
    head = data.split(b"\r\n\r\n", 1)[0]
    if config.journal.sender.isascii() and record["journal_address"].isascii():
        assert head.isascii()
    else:
        head.decode("utf-8")

    # Sender, Subject, Message-ID, then exactly one line per covered recipient
    lines = text_lines(text)
    assert len(lines) == 3 + len(record["recipients"])
    assert lines[0].startswith("Sender: ")
    assert lines[1].startswith("Subject: ")
    assert lines[2].startswith("Message-ID: ")
    for line, r in zip(lines[3:], record["recipients"], strict=True):
        assert line.startswith(RECIPIENT_PREFIX.get(r["type"], "Recipient") + ": ")
    # the subject shown in the text and in the header is the same one line
    assert lines[1].rstrip() == f"Subject: {msg['Subject']}".rstrip()


@settings(SETTINGS, max_examples=100)
@given(copies(), st.sampled_from([{"format": "COPY"}, {"kind": "NDR"}]))
def test_copy_format_and_ndrs_are_sent_unchanged(arg: Any, over: dict[str, str]) -> None:
    record, config = arg
    assert build_message({**record, **over}, config) == record["original"]


def as_consumed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as delivery admits it: encoded, then decoded with the original a view."""
    copy = decode(encode(JOURNAL_COPY, record), JOURNAL_COPY, tail_view=True)
    assert isinstance(copy["original"], memoryview)
    return copy


@SETTINGS
@given(
    copies(),
    st.sampled_from([None, "original", "record", "both"]),
    st.sampled_from([{}, {"format": "COPY"}, {"kind": "NDR"}]),
)
def test_a_copy_consumed_as_a_view_goes_out_as_the_same_bytes(
    arg: Any, marker_in: str | None, over: dict[str, str]
) -> None:
    """What delivery sends of a copy whose original is a view of the consumed record is what it
    sends of the copy itself. The first boundary the report would choose may be written into the
    original (which must then not use it) or only elsewhere in the record (which must not stop
    it): a search of the view that looked at the record around it, or compared integers, would
    differ here."""
    record, config = arg
    # as the journal worker writes them: recipient types of the schema
    recipients = [
        {**r, "type": "TO" if r["type"] == "bogus" else r["type"]} for r in record["recipients"]
    ]
    record = {**record, **over, "recipients": recipients}
    marker = "--" + mime.choose_boundary(str(record["copy_id"]))
    if marker_in in ("original", "both"):
        record["original"] = record["original"] + marker.encode() + b"\r\n"
    if marker_in in ("record", "both"):
        record["last_reply"] = marker  # in the record, not in the report
    consumed = as_consumed(record)
    sent = outgoing_message(consumed, config)
    assert sent.payload() == outgoing_message(record, config).payload()
    assert b"".join(sent.payload_parts()) == sent.payload()
    if not over:
        boundary = parse(sent.data()).get_boundary()
        assert boundary is not None
        chosen_first = "--" + boundary == marker
        assert chosen_first == (marker_in in (None, "record"))


failures = st.builds(
    Failure,
    reply=hostile_text(),
    remote=st.booleans(),
    expired=st.booleans(),
    attempts=st.integers(min_value=1, max_value=500),
    last_attempt_ms=st.integers(min_value=0, max_value=4_000_000_000_000),
    remote_mta=st.one_of(st.none(), hostile_text(2)),
)


@SETTINGS
@given(copies(), failures)
def test_ndr_is_well_formed_and_returns_the_copy(arg: Any, failure: Failure) -> None:
    record, config = arg
    sent = build_message(record, config)
    data = build_ndr(record, sent, failure, config, now_ms=1_700_000_000_000)
    msg = parse(data)
    assert_headers_safe(msg, NDR_HEADERS)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    boundary = msg.get_boundary()
    assert boundary
    text, status, returned = msg.get_payload()
    assert [p.get_content_type() for p in (text, status)] == [
        "text/plain",
        "message/delivery-status",
    ]
    for part in (text, status, returned):
        assert [k for k, _ in part.items()] == PART_HEADERS

    whole = len(sent) <= config.delivery.ndr_attach_max_bytes
    ctype = b"message/rfc822" if whole else b"text/rfc822-headers"
    assert returned.get_content_type() == ctype.decode()
    start, end = attachment_span(data, boundary, ctype)
    assert data[start:end] == (sent if whole else header_block(sent))
    assert_our_lines_are_clean(data, start, end)

    # the delivery-status part: one per-message and one per-recipient block of fields
    blocks = status.get_payload()
    assert len(blocks) == 2
    assert blocks[0]["Reporting-MTA"] == "dns; gw1.corp.example"
    assert blocks[1]["Action"] == "failed"
    assert blocks[1]["Status"][0] in "45"
    assert [k for k, _ in blocks[1].items()][:3] == ["Final-Recipient", "Action", "Status"]
    # a long reply is folded, not lost: the same text once the folding blanks are removed
    raw = dict(blocks[1].raw_items())["Diagnostic-Code"]  # 8-bit octets come surrogate-escaped
    raw = raw.encode("ascii", "surrogateescape").decode("utf-8")
    assert "".join(raw.split()) == "".join(diagnostic_code(failure).split())
    # the human-readable part has a fixed number of lines, whatever the reply held
    assert len(text_lines(text)) == 16


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 497, 498, 499, 500, 996, 997, 998, 999, 1000, 1001, 2500]),
            st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
        ),
        max_size=8,
    )
)
def test_long_line_probe_agrees_with_splitting_into_lines(parts: list[tuple[int, bytes]]) -> None:
    """The block probe finds exactly the lines over 998 octets that splitting would."""
    data = b"".join(b"x" * n + eol for n, eol in parts)
    lines = data.split(b"\n")
    expected = len(data) > MAX_LINE and (
        max(map(len, lines[:-1]), default=0) > MAX_LINE + 1 or len(lines[-1]) > MAX_LINE
    )
    assert has_long_line(data) == expected


# -- the short cuts of mailjournal.mime give what the general path gives --------------------------

_PLAIN = st.text(alphabet=st.sampled_from(list(' \t=?aZ0.:;,"()<>@\\é\u00a0\u2028\x0b\x85')))
_FIELD_TEXT = st.one_of(hostile_text(), st.text(), _PLAIN, _PLAIN.map(lambda s: s[:70]))


def _decoded_by_policy(raw: str) -> str:
    """decode_header_text's general path, written out: clean, parse as a header, clean."""
    text = mime.clean_text(raw)
    with contextlib.suppress(Exception):
        text = str(policy.default.header_factory("subject", text))
    return mime.clean_text(text)


@settings(max_examples=2000, deadline=None)
@given(_FIELD_TEXT)
def test_clean_text_short_cut_agrees_with_the_general_path(value: str) -> None:
    assert mime.clean_text(value) == mime._clean_text(value)


@settings(max_examples=2000, deadline=None)
@given(_FIELD_TEXT.filter(lambda s: len(s) <= mime.MAX_SUMMARY_CHARS))
def test_header_text_short_cut_agrees_with_the_parser(raw: str) -> None:
    assert mime.decode_header_text(raw) == _decoded_by_policy(raw)


@settings(max_examples=2000, deadline=None)
@given(_FIELD_TEXT, st.sampled_from(["Subject", "Comments", "X-Comment"]), st.booleans())
def test_fold_short_cut_agrees_with_the_policy(value: str, name: str, utf8: bool) -> None:
    pol = policy.SMTPUTF8 if utf8 else policy.SMTP
    assert pol.max_line_length == mime._FOLD_AT
    expected = mime._policy_fold(name, mime.clean_text(value), pol)
    assert mime._fold_header(name, value, utf8=utf8) == expected
