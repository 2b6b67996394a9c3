"""Non-delivery reports (pure: no I/O): RFC 3464 ``multipart/report; report-type=delivery-status``.

An NDR reports a journal copy that failed permanently (a 5xx reply) or expired. It goes to the NDR
address of the copy's direction with the null reverse-path (``MAIL FROM:<>``), is marked
``Auto-Submitted: auto-replied`` and carries our loop-guard stamp, so it is never journaled, never
answered by another NDR, and never reaches the original sender.

The NDR is itself queued as a :class:`JournalCopy` of kind NDR (``original`` = the NDR bytes), so
it goes through the same sending, retry and expiry machinery; an NDR that cannot be delivered is
dead-lettered (see :mod:`delivery.handler`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from delivery.report import journal_headers, seal
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
    header_block,
    message_id_for,
    render_field,
    rfc5322_date,
    safe_ascii,
    simple_header,
    text_part,
)
from schemas.events import JournalCopyKind, ReportFormat, make_ndr_copy_id, to_millis
from schemas.records import journal_copy

log = logging.getLogger(__name__)


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
    stamp_key: bytes | None = None,
) -> bytes:
    """The NDR message about ``copy`` (whose sent form was ``sent_message``); when building it
    raises, a minimal NDR without the fields rendered from the original (subject, Message-ID,
    the reply text in escaped ASCII): an NDR always builds. ``stamp_key``: the key the caller
    read (else the configured one is read now)."""
    try:
        return _build_ndr(copy, sent_message, failure, config, now_ms=now_ms, stamp_key=stamp_key)
    except Exception:
        log.exception(
            "NDR about copy %s failed to build; sending a minimal one",
            safe_ascii(copy.get("copy_id")),
        )
        RENDER_FALLBACKS.labels("ndr").inc()
        minimal = dataclasses.replace(
            failure,
            reply=safe_ascii(failure.reply),
            remote_mta=safe_ascii(failure.remote_mta) if failure.remote_mta else None,
        )
        return _build_ndr(
            without_rendered_fields(copy),
            sent_message,
            minimal,
            config,
            now_ms=now_ms,
            stamp_key=stamp_key,
        )


def without_rendered_fields(copy: Mapping[str, Any]) -> dict[str, Any]:
    """``copy`` without the fields taken from the original's header, the sender and the
    recipients in :func:`safe_ascii` form: what a minimal NDR is built from when the full one
    raised."""
    out = without_header_fields(copy)
    out.update(
        original_sender=safe_ascii(copy.get("original_sender")),
        recipients=[
            {**r, "address": safe_ascii(r.get("address")), "expanded": None, "forwarded": None}
            for r in copy.get("recipients") or []
        ],
    )
    return out


def _build_ndr(
    copy: Mapping[str, Any],
    sent_message: bytes,
    failure: Failure,
    config: Config,
    *,
    now_ms: int,
    stamp_key: bytes | None,
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
    return seal(message, config, copy_id=ndr_id, to=ndr_address, date_ms=now_ms, key=stamp_key)


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
