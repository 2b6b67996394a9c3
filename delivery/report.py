"""The message delivery sends for a journal copy (pure: no I/O).

Format ``report`` (default) is an envelope journal report in the Exchange 2007+ layout that
archivers parse::

    X-MS-Journal-Report:
    multipart/mixed
      text/plain       Sender: / Subject: / Message-ID: / one line per covered recipient
      message/rfc822   the original, byte for byte

Format ``copy`` is the original bytes, unaltered.

The multipart body is assembled here byte by byte with :mod:`mailjournal.mime`'s parts (why not
by ``email.generator``, and how no field of the original can inject a header or a recipient line,
is said there). The header fields and the loop-guard seal of our reports are shared with the
journal NDRs (:mod:`delivery.ndr`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mailjournal.config import Config
from mailjournal.mime import (
    CRLF,
    RENDER_FALLBACKS,
    choose_boundary,
    clean_text,
    combine_encodings,
    decode_header_text,
    fold_header,
    message_id_for,
    render_field,
    rfc5322_date,
    safe_ascii,
    simple_header,
    text_part,
)
from mailjournal.smtp.wire import BodyFacts, Buffer, Outgoing, Part
from mailjournal.stamp import HEADER as STAMP_HEADER
from mailjournal.stamp import PLACEHOLDER as STAMP_PLACEHOLDER
from mailjournal.stamp import StampKeyError, make_stamp_of_parts, stamp_head, stamp_message
from schemas.events import to_millis

log = logging.getLogger(__name__)

RECIPIENT_PREFIX = {"TO": "To", "CC": "Cc", "BCC": "Bcc", "RECIPIENT": "Recipient"}


def directions_text(directions: Iterable[str]) -> str:
    """The Avro enums are upper case; headers and reports show them in lower case."""
    return ", ".join(str(d).lower() for d in directions)


def recipient_line(recipient: Mapping[str, Any]) -> str:
    prefix = RECIPIENT_PREFIX.get(str(recipient.get("type") or "RECIPIENT"), "Recipient")
    line = f"{prefix}: {clean_text(recipient.get('address'))}"
    if recipient.get("expanded"):
        line += f", Expanded: {clean_text(recipient['expanded'])}"
    if recipient.get("forwarded"):
        line += f", Forwarded: {clean_text(recipient['forwarded'])}"
    return line


def report_lines(copy: Mapping[str, Any], subject: str | None = None) -> list[str]:
    """The envelope part of the report: Sender, Subject, Message-ID, one line per recipient.
    ``subject``: the copy's subject as display text, when the caller has decoded it already."""
    sender = render_field(clean_text, copy.get("original_sender")) or "<>"
    if subject is None:
        subject = render_field(decode_header_text, copy.get("subject"))
    lines = [
        f"Sender: {sender}",
        f"Subject: {subject}",
        f"Message-ID: {render_field(clean_text, copy.get('message_id'))}",
    ]
    lines.extend(render_field(recipient_line, r) for r in copy.get("recipients") or [])
    return lines


def _needs_utf8_headers(*addresses: str) -> bool:
    return not all(a.isascii() for a in addresses)


def journal_headers(
    copy: Mapping[str, Any],
    config: Config,
    *,
    subject: str,
    date_ms: int,
    copy_id: str | None = None,
    to: str | None = None,
    from_: str | None = None,
    auto_submitted: str = "auto-generated",
) -> list[bytes]:
    """The header fields our reports and NDRs share (From, To, Subject, Date, Message-ID, our
    identification and loop-guard fields, Auto-Submitted)."""
    copy_id = copy_id or str(copy["copy_id"])
    sender = config.journal.sender
    to = to or str(copy["journal_address"])
    utf8 = _needs_utf8_headers(sender, to)
    return [
        simple_header("From", from_ or sender),
        simple_header("To", to),
        fold_header("Subject", subject, utf8=utf8),
        simple_header("Date", rfc5322_date(date_ms)),
        simple_header("Message-ID", message_id_for(copy_id, sender)),
        simple_header("MIME-Version", "1.0"),
        simple_header("Auto-Submitted", auto_submitted),
        simple_header(STAMP_HEADER, STAMP_PLACEHOLDER),  # made by seal() once the body exists
        simple_header("X-MailJournal-Copy-Id", copy_id),
        simple_header("X-MailJournal-Event-Id", str(copy.get("event_id") or "")),
        simple_header("X-MailJournal-Direction", directions_text(copy.get("directions") or [])),
        *(
            [simple_header("X-MailJournal-Replay", str(copy["replay_run"]))]
            if copy.get("replay_run")
            else []
        ),
    ]


def _stamp_key(config: Config, key: bytes | None = None) -> bytes:
    """``key`` when the caller holds one (delivery reads its key once, at start), else the
    configured key read now."""
    if key is not None:
        return key
    key = config.journal.stamp_key()
    if key is None:
        raise StampKeyError("journal.stamp_secret_file: not set; reports cannot be stamped")
    return key


def seal(
    message: bytes,
    config: Config,
    *,
    copy_id: str,
    to: str,
    date_ms: int,
    key: bytes | None = None,
) -> bytes:
    """``message`` (a report or NDR we built) with our loop-guard stamp: bound to its body, its
    destination ``to`` and its Date, so it exempts this message to that address only."""
    return stamp_message(
        message,
        copy_id=copy_id,
        destination=to,
        created_ms=date_ms,
        key=_stamp_key(config, key),
    )


def seal_head(
    head: bytes,
    body: Iterable[Buffer],
    config: Config,
    *,
    copy_id: str,
    to: str,
    date_ms: int,
    key: bytes | None = None,
) -> bytes:
    """:func:`seal` of a message built as its header section ``head`` (ending with the blank
    line) and the parts of its body: the stamped header section, the body left unjoined."""
    value = make_stamp_of_parts(copy_id, to, date_ms, body, _stamp_key(config, key))
    return stamp_head(head, value)


def build_report(copy: Mapping[str, Any], config: Config) -> bytes:
    """The Exchange-style envelope journal report for a JOURNAL copy.

    A pure function of the copy record and the configuration (the Date is the time the original
    was received), so every attempt and every duplicate send carries the same bytes."""
    return report_parts(copy, config).data()


def report_parts(
    copy: Mapping[str, Any], config: Config, stamp_key: bytes | None = None
) -> Outgoing:
    """:func:`build_report` as the parts delivery sends unjoined: the stamped header section,
    the summary part with the attachment's part header, the original, the closing delimiter.
    The original is scanned once (:class:`BodyFacts`), for its transfer encoding and its send."""
    original: Buffer = copy["original"]  # a view of the consumed record (tail_view)
    original_facts = original_body_facts(copy)
    subject = render_field(
        decode_header_text, copy.get("subject")
    )  # the summary's and the header's
    text, text_cte = text_part(report_lines(copy, subject))
    original_cte = original_facts.transfer_encoding()
    boundary = choose_boundary(str(copy["copy_id"]), original, text)
    date_ms = to_millis(copy.get("received_at"))
    headers = journal_headers(copy, config, subject=subject, date_ms=date_ms)
    headers[6:6] = [
        simple_header("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
        simple_header("Content-Transfer-Encoding", combine_encodings(text_cte, original_cte)),
        simple_header("X-MS-Journal-Report", ""),
    ]
    delimiter = b"--" + boundary.encode("ascii")
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046 §5.1.1): the attached
    # part's body is exactly ``original``, whether or not it ends with a line break.
    summary = b"".join(
        [
            delimiter,
            CRLF,
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Transfer-Encoding: " + text_cte.encode("ascii") + CRLF,
            CRLF,
            text,
            delimiter,
            CRLF,
            b"Content-Type: message/rfc822\r\n",
            b"Content-Transfer-Encoding: " + original_cte.encode("ascii") + CRLF,
            CRLF,
        ]
    )
    closing = CRLF + delimiter + b"--" + CRLF
    # the loop-guard stamp covers the body (everything after the header section)
    head = seal_head(
        b"".join([*headers, CRLF]),
        (summary, original, closing),
        config,
        copy_id=str(copy["copy_id"]),
        to=str(copy["journal_address"]),
        date_ms=date_ms,
        key=stamp_key,
    )
    return Outgoing(
        [Part.of(head), Part.of(summary), Part(original, original_facts), Part.of(closing)]
    )


def original_body_facts(copy: Mapping[str, Any]) -> BodyFacts:
    """The facts of the copy's original: as ingest learnt them (``body_facts``, JournalCopy
    v4), else learnt here."""
    return BodyFacts.from_record(copy.get("body_facts")) or BodyFacts.of(bytes(copy["original"]))


def build_message(copy: Mapping[str, Any], config: Config) -> bytes:
    """The bytes delivery sends for ``copy`` (:func:`outgoing_message`, joined)."""
    return outgoing_message(copy, config).data()


def outgoing_message(
    copy: Mapping[str, Any], config: Config, stamp_key: bytes | None = None
) -> Outgoing:
    """What delivery sends for ``copy``: an NDR as built, a ``copy`` unaltered, else the journal
    report -- or, when building the report raises (it should not: every field has a fallback),
    the original unaltered as in the ``copy`` format: a copy always goes out. ``stamp_key``: the
    key the caller read (else the configured one is read now)."""
    if copy.get("kind") == "NDR" or copy.get("format") == "COPY":
        return Outgoing.of(copy["original"], original_body_facts(copy))
    try:
        return report_parts(copy, config, stamp_key)
    except Exception:
        log.exception(
            "report for copy %s failed to build; sending the original as a copy",
            safe_ascii(copy.get("copy_id")),
        )
        RENDER_FALLBACKS.labels("report").inc()
        return Outgoing.of(copy["original"])


def envelope_sender(copy: Mapping[str, Any]) -> str:
    """MAIL FROM: the null reverse-path for NDRs (RFC 5321 §4.5.5: no NDR about an NDR), the
    direction's NDR address for journal copies (downstream bounces reach it)."""
    return "" if copy.get("kind") == "NDR" else str(copy.get("ndr_address") or "")
