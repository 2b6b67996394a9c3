"""Non-delivery reports (pure: no I/O): RFC 3464 ``multipart/report; report-type=delivery-status``.

An NDR reports a journal copy that failed permanently (a 5xx reply) or expired. It goes to the NDR
address of the copy's direction with the null reverse-path (``MAIL FROM:<>``), is marked
``Auto-Submitted: auto-replied`` and carries our loop-guard stamp, so it is never journaled, never
answered by another NDR, and never reaches the original sender.

The NDR is itself queued as a :class:`JournalCopy` of kind NDR (``original`` = the NDR bytes), so
it goes through the same sending, retry and expiry machinery; an NDR that cannot be delivered is
dead-lettered (see :mod:`delivery.worker`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from delivery import metrics
from delivery.report import (
    CRLF,
    MAX_LINE,
    body_transfer_encoding,
    choose_boundary,
    clean_text,
    combine_encodings,
    decode_header_text,
    header_block,
    journal_headers,
    message_id_for,
    render_field,
    rfc5322_date,
    safe_ascii,
    seal,
    simple_header,
    text_part,
    to_millis,
    without_rendered_fields,
)
from mailjournal.config import Config
from schemas.events import JournalCopyKind, ReportFormat, make_ndr_copy_id
from schemas.records import journal_copy

log = logging.getLogger(__name__)

_ENHANCED = re.compile(r"^\s*([245])\d\d[ -]+([245]\.\d{1,3}\.\d{1,3})\b")
_CODE = re.compile(r"^\s*([245])\d\d\b")

EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired


@dataclass(frozen=True)
class Failure:
    """Why a copy is given up."""

    reply: str  # last remote reply ("550 5.1.1 ...") or local error text
    remote: bool  # the reply came from the SMTP server (vs. a local/network error)
    expired: bool  # retried until the expiry, not refused permanently
    attempts: int
    last_attempt_ms: int
    remote_mta: str | None = None  # smart host that answered


def dsn_status(failure: Failure) -> str:
    """RFC 3463 status: the server's enhanced code when it gave one, 4.4.7 for expiry, else the
    class of its reply code with 0.0 (``5.0.0``)."""
    # a local refusal names its reason the same way ("553 5.6.7 ... does not offer SMTPUTF8")
    m = _ENHANCED.match(failure.reply)
    if m and (m.group(1) == "5" or failure.expired):
        return m.group(2)
    if failure.expired:
        return EXPIRED_STATUS
    m = _CODE.match(failure.reply) if failure.remote else None
    return f"{m.group(1)}.0.0" if m else "5.0.0"


def diagnostic_code(failure: Failure) -> str:
    text = clean_text(failure.reply) or "no reply"
    return f"smtp; {text}" if failure.remote else f"X-mailjournal; {text}"


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"  # RFC 6533 for non-ASCII addresses


def human_text(
    copy: Mapping[str, Any], failure: Failure, config: Config, attached: str
) -> list[str]:
    hours = config.delivery.expiry_seconds / 3600
    reason = (
        f"it could not be delivered within {hours:g} hours (expired after "
        f"{failure.attempts} attempts)"
        if failure.expired
        else "the receiving server refused it permanently"
    )
    return [
        f"This is the mail journaling system at {config.delivery.reporting_mta}.",
        "",
        "A journal copy could not be delivered to its journal address and has been given up:",
        reason + ".",
        "",
        f"  Journal address:   {clean_text(copy.get('journal_address'))}",
        f"  Copy id:           {clean_text(copy.get('copy_id'))}",
        f"  Event id:          {clean_text(copy.get('event_id'))}",
        f"  Original sender:   {clean_text(copy.get('original_sender')) or '<>'}",
        f"  Original subject:  {render_field(decode_header_text, copy.get('subject'))}",
        f"  Message-ID:        {clean_text(copy.get('message_id'))}",
        f"  Attempts:          {failure.attempts}",
        f"  Last reply:        {clean_text(failure.reply)}",
        "",
        f"The journal copy is attached ({attached}).",
        "This report was sent to the journaling NDR address, not to the original sender.",
    ]


def delivery_status(copy: Mapping[str, Any], failure: Failure, config: Config) -> bytes:
    address = str(copy.get("journal_address") or "")
    per_message = [
        f"Reporting-MTA: dns; {clean_text(config.delivery.reporting_mta)}",
        f"X-MailJournal-Copy-Id: {clean_text(copy.get('copy_id'))}",
        f"Arrival-Date: {rfc5322_date(to_millis(copy.get('received_at')))}",
    ]
    per_recipient = recipient_fields(address, "failed", dsn_status(failure), failure)
    per_message = [fold_field(line) for line in per_message]
    return ("\r\n".join(per_message) + "\r\n\r\n" + "\r\n".join(per_recipient) + "\r\n").encode(
        "utf-8"
    )


def build_ndr(
    copy: Mapping[str, Any],
    sent_message: bytes,
    failure: Failure,
    config: Config,
    *,
    now_ms: int,
) -> bytes:
    """The NDR message about ``copy`` (whose sent form was ``sent_message``); when building it
    raises, a minimal NDR without the fields rendered from the original (subject, Message-ID,
    the reply text in escaped ASCII): an NDR always builds."""
    try:
        return _build_ndr(copy, sent_message, failure, config, now_ms=now_ms)
    except Exception:
        log.exception(
            "NDR about copy %s failed to build; sending a minimal one",
            safe_ascii(copy.get("copy_id")),
        )
        metrics.RENDER_FALLBACKS.labels("ndr").inc()
        minimal = dataclasses.replace(
            failure,
            reply=safe_ascii(failure.reply),
            remote_mta=safe_ascii(failure.remote_mta) if failure.remote_mta else None,
        )
        return _build_ndr(
            without_rendered_fields(copy), sent_message, minimal, config, now_ms=now_ms
        )


def _build_ndr(
    copy: Mapping[str, Any],
    sent_message: bytes,
    failure: Failure,
    config: Config,
    *,
    now_ms: int,
) -> bytes:
    ndr_id = make_ndr_copy_id(str(copy["copy_id"]))
    limit = config.delivery.ndr_attach_max_bytes
    if len(sent_message) <= limit:
        attachment, attach_type, attached = sent_message, "message/rfc822", "complete"
    else:
        attachment = header_block(sent_message)
        attach_type = "text/rfc822-headers"
        attached = f"header section only: the copy exceeds {limit} bytes"
    text, text_cte = text_part(human_text(copy, failure, config, attached))
    status = delivery_status(copy, failure, config)
    status_cte = "7bit" if status.isascii() else "8bit"
    attach_cte = body_transfer_encoding(attachment)
    boundary = choose_boundary(ndr_id, attachment, text, status)
    subject = "Undeliverable journal report"
    original_subject = render_field(decode_header_text, copy.get("subject"))
    if original_subject:
        subject += f": {original_subject}"
    ndr_address = str(copy.get("ndr_address") or "")
    headers = journal_headers(
        copy,
        config,
        subject=subject,
        date_ms=now_ms,
        copy_id=ndr_id,
        to=ndr_address,
        from_=f"Mail Delivery System <{config.journal.sender}>",
        auto_submitted="auto-replied",
    )
    headers[6:6] = [
        simple_header(
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
        simple_header(
            "Content-Transfer-Encoding", combine_encodings(text_cte, status_cte, attach_cte)
        ),
    ]
    headers.append(simple_header("X-MailJournal-About-Copy-Id", str(copy["copy_id"])))
    message = multipart_report(
        headers,
        boundary,
        (text, text_cte),
        (status, status_cte),
        (attachment, attach_type, attach_cte),
    )
    return seal(message, config, copy_id=ndr_id, to=ndr_address, date_ms=now_ms)


def make_ndr_copy(
    copy: Mapping[str, Any], ndr_message: bytes, config: Config, *, now_ms: int
) -> dict[str, Any]:
    """The JournalCopy of kind NDR that carries ``ndr_message`` to the copy's NDR address.

    Its id is derived from the failed copy's (one NDR per copy; a re-sent duplicate has the same
    Message-ID); its received_at is now, so its own expiry window starts when it is created."""
    ndr_address = str(copy["ndr_address"])
    ndr_id = make_ndr_copy_id(str(copy["copy_id"]))
    return dict(
        journal_copy(
            copy_id=ndr_id,
            event_id=copy["event_id"],
            kind=JournalCopyKind.NDR,
            received_at=now_ms,
            directions=copy.get("directions") or [],
            sources=copy.get("sources") or [],
            journal_address=ndr_address,
            ndr_address=ndr_address,
            format=ReportFormat.COPY,
            original_sender="",
            recipients=[],
            message_id=message_id_for(ndr_id, config.journal.sender),
            subject=copy.get("subject"),
            about_copy_id=copy["copy_id"],
            original=ndr_message,
        )
    )


def multipart_report(
    headers: list[bytes],
    boundary: str,
    text: tuple[bytes, str],
    status: tuple[bytes, str],
    attachment: tuple[bytes, str, str],
) -> bytes:
    """An RFC 3462 ``multipart/report`` assembled byte by byte: the human-readable part, the
    ``message/delivery-status`` part and the returned message or headers (never re-encoded).
    ``text`` and ``status`` are (body, transfer encoding); ``attachment`` adds its content type."""
    text_body, text_cte = text
    status_body, status_cte = status
    attach_body, attach_type, attach_cte = attachment
    delimiter = b"--" + boundary.encode("ascii")
    return b"".join(
        [
            *headers,
            CRLF,
            delimiter,
            CRLF,
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Transfer-Encoding: " + text_cte.encode("ascii") + CRLF,
            CRLF,
            text_body,
            delimiter,
            CRLF,
            b"Content-Type: message/delivery-status\r\n",
            b"Content-Transfer-Encoding: " + status_cte.encode("ascii") + CRLF,
            CRLF,
            status_body,
            delimiter,
            CRLF,
            b"Content-Type: " + attach_type.encode("ascii") + CRLF,
            b"Content-Transfer-Encoding: " + attach_cte.encode("ascii") + CRLF,
            CRLF,
            attach_body,
            CRLF,
            delimiter,
            b"--",
            CRLF,
        ]
    )


def recipient_fields(address: str, action: str, status: str, failure: Failure) -> list[str]:
    """The per-recipient fields of a delivery-status part (RFC 3464 §2.3), shared by journal
    NDRs and DSNs to original senders."""
    fields = [
        f"Final-Recipient: {_address_type(address)}; {clean_text(address)}",
        f"Action: {action}",
        f"Status: {status}",
    ]
    if failure.remote and failure.remote_mta:
        fields.append(f"Remote-MTA: dns; {clean_text(failure.remote_mta)}")
    fields += [
        f"Diagnostic-Code: {diagnostic_code(failure)}",
        f"Last-Attempt-Date: {rfc5322_date(failure.last_attempt_ms)}",
    ]
    return [fold_field(line) for line in fields]


# words of a folded field: at most this many characters (4 octets each in UTF-8 at worst)
_FOLD_WORD = 200


def fold_field(line: str) -> str:
    """A ``Name: value`` field of a delivery-status part, folded at blanks into lines of about
    78 characters when it would pass 998 octets (the fields have header syntax, RFC 3464 §2.1;
    a remote reply or a local error text can be that long). A word that alone would pass the
    limit is split with a blank: the text is diagnostic, its lines must stay valid."""
    if len(line.encode()) <= MAX_LINE:
        return line
    words = [
        word[i : i + _FOLD_WORD]
        for word in line.split(" ")
        if word
        for i in range(0, len(word), _FOLD_WORD)
    ]
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > 78:
            lines.append(" " + word)  # the fold: CRLF, then the blank
        else:
            lines[-1] += " " + word
    return "\r\n".join(lines)
