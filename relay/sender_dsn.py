"""DSNs to original senders (pure: no I/O): RFC 3464 reports about relayed originals.

SMTP's rules, not the journal's: a relayed original that fails permanently or expires is reported
to its **original envelope sender** (never to a journal NDR address), as the sender asked in
RFC 3461 terms -- ``NOTIFY=NEVER`` gets nothing, ``NOTIFY`` without ``FAILURE`` gets no failure
report, ``DELAY`` (or no NOTIFY at all) a delay report when those are enabled; ``RET=HDRS``
returns the header section, ``RET=FULL`` (and no RET) the message up to a size limit; ``ENVID``
and ``ORCPT`` are returned as Original-Envelope-Id and Original-Recipient. The null sender gets
nothing: a bounce is never bounced.

The DSN travels as a RELAY copy with the null reverse-path, routed like any other mail to the
sender's domain; if it cannot be delivered it is dead-lettered, never reported again. The
building blocks (status codes, diagnostic codes, MIME assembly) are :mod:`mailjournal.dsn`'s and
:mod:`mailjournal.mime`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailjournal.config import Config
from mailjournal.dsn import (
    Failure,
    dsn_status,
    fold_field,
    multipart_report,
    recipient_fields,
    without_header_fields,
)
from mailjournal.mime import (
    RENDER_FALLBACKS,
    body_transfer_encoding,
    choose_boundary,
    clean_text,
    combine_encodings,
    decode_header_text,
    fold_header,
    header_block,
    message_id_for,
    render_field,
    rfc5322_date,
    safe_ascii,
    simple_header,
    text_part,
)
from relay.routing import route_key
from schemas.events import JournalCopyKind, ReportFormat, make_copy_id, to_millis
from schemas.records import covered_recipient, journal_copy, mail_params, recipient, relay_envelope

log = logging.getLogger(__name__)

_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(value: str) -> str:
    """RFC 3461 section 4: ``+HH`` is the byte HH."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def wants(recipient: Mapping[str, Any], action: str) -> bool:
    """Whether the sender asked for a DSN with ``action`` (failed, delayed) for ``recipient``.
    No NOTIFY: failure reports, and delay reports when the relay sends them (RFC 3461 4.1
    leaves the default to the MTA)."""
    notify = [str(n).upper() for n in recipient.get("notify") or []]
    if not notify:
        return action in ("failed", "delayed")
    if "NEVER" in notify:
        return False
    return {"failed": "FAILURE", "delayed": "DELAY"}[action] in notify


@dataclass(frozen=True)
class RecipientFailure:
    recipient: Mapping[str, Any]  # the MessageReceived recipient (address, notify, orcpt)
    failure: Failure


def dsn_recipients(
    copy: Mapping[str, Any], failures: Sequence[RecipientFailure], action: str
) -> list[RecipientFailure]:
    """The failures the sender is owed a report about (none for the null sender)."""
    if not copy.get("original_sender"):
        return []
    return [f for f in failures if wants(f.recipient, action)]


def _per_recipient(rf: RecipientFailure, action: str, until_ms: int | None) -> list[str]:
    address = str(rf.recipient["address"])
    lines = []
    orcpt = rf.recipient.get("orcpt")
    if orcpt:
        kind, _, value = str(orcpt).partition(";")
        orig = f"Original-Recipient: {clean_text(kind)};{clean_text(xtext_decode(value))}"
        lines.append(fold_field(orig))  # ORCPT comes from the client: any length
    f = rf.failure
    status = dsn_status(f) if action == "failed" else _delay_status(f)
    lines += recipient_fields(address, action, status, f)
    if until_ms is not None:
        lines.append(f"Will-Retry-Until: {rfc5322_date(until_ms)}")
    return lines


def _delay_status(f: Failure) -> str:
    m = re.match(r"^\s*4\d\d[ -]+(4\.\d{1,3}\.\d{1,3})\b", f.reply) if f.remote else None
    return m.group(1) if m else "4.0.0"


def delivery_status(
    copy: Mapping[str, Any],
    failures: Sequence[RecipientFailure],
    action: str,
    config: Config,
    until_ms: int | None = None,
) -> bytes:
    env = copy.get("relay") or {}
    params = env.get("mail_params") or {}
    per_message = []
    if params.get("envid"):
        per_message.append(f"Original-Envelope-Id: {clean_text(xtext_decode(params['envid']))}")
    per_message += [
        f"Reporting-MTA: dns; {clean_text(reporting_mta(config))}",
        f"Arrival-Date: {rfc5322_date(to_millis(copy['received_at']))}",
    ]
    blocks = ["\r\n".join(fold_field(line) for line in per_message)]
    blocks += ["\r\n".join(_per_recipient(rf, action, until_ms)) for rf in failures]
    return ("\r\n\r\n".join(blocks) + "\r\n").encode("utf-8")


def reporting_mta(config: Config) -> str:
    return config.relay.reporting_mta or config.delivery.reporting_mta


def human_text(
    copy: Mapping[str, Any], failures: Sequence[RecipientFailure], action: str, config: Config
) -> list[str]:
    if action == "failed":
        intro = [
            "Your message could not be delivered to the following recipients.",
            "It has been given up; the reasons are listed below.",
        ]
    else:
        intro = [
            "Your message has not yet been delivered to the following recipients.",
            "Delivery is still being retried; you need not send it again.",
        ]
    lines = [f"This is the mail system at {reporting_mta(config)}.", "", *intro, ""]
    for rf in failures:
        lines.append(
            f"  <{clean_text(str(rf.recipient['address']))}>: {clean_text(rf.failure.reply)}"
        )
    lines += ["", f"  Subject:     {render_field(decode_header_text, copy.get('subject'))}"]
    lines.append(f"  Message-ID:  {render_field(clean_text, copy.get('message_id'))}")
    return lines


def build_sender_dsn(
    copy: Mapping[str, Any],
    failures: Sequence[RecipientFailure],
    action: str,
    config: Config,
    *,
    now_ms: int,
    dsn_id: str,
    until_ms: int | None = None,
) -> bytes:
    """The RFC 3464 report about ``failures`` (one copy's recipients) to the original sender;
    when building it raises, a minimal one without the original's subject and Message-ID and
    with the replies in escaped ASCII."""
    try:
        return _build_sender_dsn(
            copy, failures, action, config, now_ms=now_ms, dsn_id=dsn_id, until_ms=until_ms
        )
    except Exception:
        log.exception("DSN %s failed to build; sending a minimal one", safe_ascii(dsn_id))
        RENDER_FALLBACKS.labels("sender_dsn").inc()
        minimal = [
            RecipientFailure(
                rf.recipient, dataclasses.replace(rf.failure, reply=safe_ascii(rf.failure.reply))
            )
            for rf in failures
        ]
        return _build_sender_dsn(
            without_header_fields(copy),
            minimal,
            action,
            config,
            now_ms=now_ms,
            dsn_id=dsn_id,
            until_ms=until_ms,
        )


def _build_sender_dsn(
    copy: Mapping[str, Any],
    failures: Sequence[RecipientFailure],
    action: str,
    config: Config,
    *,
    now_ms: int,
    dsn_id: str,
    until_ms: int | None = None,
) -> bytes:
    env = copy.get("relay") or {}
    ret = str((env.get("mail_params") or {}).get("ret") or "").upper()
    original: bytes = bytes(copy["original"])
    limit = config.relay.dsn_attach_max_bytes
    if ret != "HDRS" and len(original) <= limit:
        attachment, attach_type = original, "message/rfc822"
    else:
        attachment, attach_type = header_block(original), "text/rfc822-headers"
    text, text_cte = text_part(human_text(copy, failures, action, config))
    status = delivery_status(copy, failures, action, config, until_ms)
    status_cte = "7bit" if status.isascii() else "8bit"
    attach_cte = body_transfer_encoding(attachment)
    boundary = choose_boundary(dsn_id, attachment, text, status)
    subject = (
        "Undelivered Mail Returned to Sender"
        if action == "failed"
        else "Delayed Mail (still being retried)"
    )
    sender = str(copy["original_sender"])
    utf8 = not sender.isascii()
    headers = [
        simple_header("From", f"Mail Delivery System <{config.relay.dsn_from}>"),
        fold_header("To", f"<{sender}>", utf8=utf8),
        simple_header("Subject", subject),
        simple_header("Date", rfc5322_date(now_ms)),
        simple_header("Message-ID", message_id_for(dsn_id, config.relay.dsn_from)),
        simple_header("Auto-Submitted", "auto-replied"),
        simple_header("MIME-Version", "1.0"),
        simple_header(
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
        simple_header(
            "Content-Transfer-Encoding", combine_encodings(text_cte, status_cte, attach_cte)
        ),
    ]
    return multipart_report(
        headers,
        boundary,
        (text, text_cte),
        (status, status_cte),
        (attachment, attach_type, attach_cte),
    )


def dsn_copy_id(copy: Mapping[str, Any], action: str) -> str:
    # one per (copy, action, attempt): a duplicate after a crash keeps the same Message-ID
    return make_copy_id(str(copy["copy_id"]), f"dsn:{action}:{copy.get('attempt') or 0}")


def make_dsn_copy(
    copy: Mapping[str, Any],
    failures: Sequence[RecipientFailure],
    action: str,
    config: Config,
    *,
    now_ms: int,
    until_ms: int | None = None,
) -> dict[str, Any]:
    """The RELAY copy that carries the DSN to the original sender, with ``MAIL FROM:<>``."""
    dsn_id = dsn_copy_id(copy, action)
    message = build_sender_dsn(
        copy, failures, action, config, now_ms=now_ms, dsn_id=dsn_id, until_ms=until_ms
    )
    sender = str(copy["original_sender"])
    return dict(
        journal_copy(
            copy_id=dsn_id,
            event_id=copy["event_id"],
            kind=JournalCopyKind.RELAY,
            received_at=now_ms,
            journal_address=sender,
            ndr_address="",
            format=ReportFormat.COPY,
            original_sender="",
            recipients=[covered_recipient(sender)],
            message_id=message_id_for(dsn_id, config.relay.dsn_from),
            subject=copy.get("subject"),
            about_copy_id=copy["copy_id"],
            relay=relay_envelope(
                mail_params(
                    body=None if message.isascii() else "8BITMIME",
                    smtputf8=not sender.isascii(),
                ),
                [recipient(sender)],
                route_key(sender, config),
            ),
            original=message,
        )
    )
