"""The loop-guard stamp carried by our journal reports and NDRs (header ``X-MailJournal-Stamp``).

Mail bearing a valid stamp is never journaled again. The stamp is an HMAC over the copy id so an
outside sender cannot add the header to keep a message out of the archive.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-MailJournal-Stamp"
_VERSION = "v1"


def make_stamp(copy_id: str, key: bytes | None) -> str:
    if key is None:
        return f"{_VERSION}; copy={copy_id}"
    mac = hmac.new(key, copy_id.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{_VERSION}; copy={copy_id}; mac={mac}"


def parse_stamp(value: str) -> dict[str, str]:
    fields = {}
    for part in value.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields[k.strip().lower()] = v.strip()
    return fields


def verify_stamp(value: str | None, key: bytes | None, *, trusted_client: bool) -> bool:
    """True when the stamp is ours. With a key, the MAC decides; without one, only a stamp on mail
    from a trusted client counts (our own delivery path), never one from the outside."""
    if not value:
        return False
    fields = parse_stamp(value)
    copy_id = fields.get("copy")
    if not value.strip().startswith(_VERSION) or not copy_id:
        return False
    if key is None:
        return trusted_client
    expected = hmac.new(key, copy_id.encode(), hashlib.sha256).hexdigest()[:32]
    return hmac.compare_digest(expected, fields.get("mac", ""))
