"""The RFC 3464 parts that every delivery status report we build shares (pure: no I/O).

Two kinds of report are built from them: the NDR about a journal copy, to the journal NDR address
(:mod:`delivery.ndr`), and the DSN about a relayed original, to its original sender
(:mod:`relay.sender_dsn`). Both are a ``multipart/report; report-type=delivery-status`` whose
per-recipient fields, status codes and diagnostic codes follow the same rules; what each says
around them is its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailjournal.mime import CRLF, MAX_LINE, clean_text, rfc5322_date

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


def without_header_fields(copy: Mapping[str, Any]) -> dict[str, Any]:
    """``copy`` without the fields taken from the original's header (subject, Message-ID): what
    a minimal report is built from when the full one raised."""
    return {**copy, "subject": None, "message_id": None}


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
