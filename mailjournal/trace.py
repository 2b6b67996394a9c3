"""The header fields ingest prepends to every message it accepts (pure: no I/O).

* its ``Received:`` trace field, as every MTA adds one (RFC 5321 section 4.4): from the client's
  HELO and IP, by our host, with ESMTP / ESMTPS / ESMTPSA, id = the event id, for the one
  recipient when there is exactly one, and the receive date. Archives date and trace by it; the
  relay's loop check counts it.
* a ``Message-ID:`` derived from the event id when the message has none (or an empty one), like
  Postfix's cleanup (``always_add_missing_headers``) and Exchange's transport: an archive that
  deduplicates by Message-ID must not collapse different messages that lack one.

The event's ``raw`` is these fields followed by the bytes as received; ``prepended_length`` and
``received_sha256`` (MessageReceived v2) keep those bytes and their digest recoverable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from mailjournal.mime import rfc5322_date
from mailjournal.smtp.wire import BodyFacts

# CR, LF and the other controls must not reach a header line from client-supplied text
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _clean(text: str) -> str:
    # ASCII only: our field must not make an ASCII message need SMTPUTF8 (RFC 6531) on the way
    # to an archive whose smart host may not offer it
    return _UNSAFE.sub("", text).encode("ascii", "replace").decode("ascii") or "unknown"


def _date(received_at: Any) -> str:
    if isinstance(received_at, datetime):
        return format_datetime(received_at)
    return rfc5322_date(int(received_at or 0))  # int milliseconds, as ingest builds the record


def received_field(event: Mapping[str, Any], hostname: str) -> bytes:
    """Our ``Received:`` field for the SMTP transaction of ``event`` (a MessageReceived)."""
    client = event.get("client") or {}
    with_ = "ESMTP" + ("S" if event.get("tls") else "") + ("A" if event.get("auth_user") else "")
    recipients = [str(r["address"]) for r in event.get("recipients") or []]
    # the one recipient, when there is exactly one (and it is ASCII, see _clean)
    one = len(recipients) == 1 and recipients[0].isascii()
    for_ = f"\r\n\tfor <{_clean(recipients[0])}>" if one else ""
    text = (
        f"Received: from {_clean(str(client.get('helo') or ''))} "
        f"([{_clean(str(client.get('ip') or ''))}])\r\n\tby {hostname} (mailjournal) "
        f"with {with_} id {event['event_id']}{for_};\r\n\t{_date(event.get('received_at'))}\r\n"
    )
    return text.encode("utf-8")


def message_id_for(event_id: str, domain: str) -> str:
    return f"<{event_id}@{domain}>"


def traced(event: Mapping[str, Any], hostname: str) -> dict[str, Any]:
    """``event`` (as ingest built it, ``raw`` = the bytes as received, ``sha256`` their digest)
    with our fields prepended to ``raw`` and the MessageReceived v2 fields set. ``hostname``
    (``ingest.hostname``) names our host in ``Received: by`` and is the domain of a Message-ID
    we add; left at its default ``localhost``, the ingest host's name is used there instead."""
    received: bytes = event["raw"]
    headers = dict(event.get("headers") or {})
    prefix = received_field(event, hostname)
    added = not (headers.get("message_id") or "").strip()
    if added:
        domain = hostname if hostname != "localhost" else _clean(str(event.get("ingest_host")))
        headers["message_id"] = message_id_for(str(event["event_id"]), domain)
        prefix += f"Message-ID: {headers['message_id']}\r\n".encode("ascii", "replace")
    raw = prefix + received
    facts = BodyFacts.from_record(event.get("body_facts"))
    return {
        **event,
        "body_facts": BodyFacts.of(prefix).followed_by(facts).record() if facts else None,
        "headers": headers,
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "prepended_length": len(prefix),
        "received_sha256": event["sha256"],
        "message_id_added": added,
        "raw": raw,
    }


def as_received(event: Mapping[str, Any]) -> bytes:
    """The bytes the client sent (``raw`` without our prepended fields; all of it in records
    written before MessageReceived v2)."""
    return bytes(event["raw"])[int(event.get("prepended_length") or 0) :]
