"""The loop-guard stamp carried by our journal reports and NDRs (header ``X-MailJournal-Stamp``).

A stamp says "this exact message was made by mailjournal for this destination": an HMAC-SHA256,
under a key of at least 32 bytes that only our stages hold, over

* the copy id,
* the copy's destination (its journal or NDR address),
* the time the stamp was made (the report's Date, or the NDR's creation),
* the SHA-256 of the stamped message's body (the bytes after its header block, which we build).

So a stamp lifted from one message validates on no other, names the one recipient it may
exempt, and expires (:data:`DEFAULT_MAX_AGE_SECONDS`). Stamps of version 1 (a MAC over the copy
id alone, or none at all) are never honoured. During a key rotation the previous key verifies
stamps but never makes them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from mailjournal.smtp.wire import Buffer

HEADER = "X-MailJournal-Stamp"
_VERSION = "v2"
MIN_KEY_BYTES = 32
MIN_DISTINCT_BYTES = 8  # 32 spaces or NULs are 32 bytes anyone can guess
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600
# a stamp made up to this far "in the future" of the receiving host still counts (clock skew
# between the delivery and ingest hosts)
CLOCK_SKEW_MS = 3600 * 1000

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class StampKeyError(ValueError):
    """The key file is missing, unreadable or holds too little key material."""


def read_key(path: Path) -> bytes:
    """The key material of ``path``, used byte for byte (a random binary key must not lose a
    leading or trailing byte that happens to be white space)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StampKeyError(f"{path}: {exc.strerror or exc}") from None
    problem = key_problem(data)
    if problem:
        raise StampKeyError(f"{path}: {problem}")
    return data


def create_key(path: Path) -> bool:
    """Write a new key (32 random bytes, owner-only) to ``path`` unless a file is there; True
    when one was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(MIN_KEY_BYTES))
    return True


def key_problem(data: bytes) -> str | None:
    if len(data) < MIN_KEY_BYTES:
        return f"{len(data)} bytes of key material, at least {MIN_KEY_BYTES} required"
    if len(set(data)) < MIN_DISTINCT_BYTES:
        return f"not random key material ({len(set(data))} distinct byte values)"
    return None


def body_of(message: bytes) -> bytes:
    """The bytes after the header block (after its first empty line); empty when there is none.
    Fields prepended to the header block (ingest's ``Received:``) leave it unchanged."""
    if message.startswith((b"\r\n", b"\n")):
        return message[2 if message.startswith(b"\r\n") else 1 :]
    m = _BLANK_LINE.search(message)
    return message[m.end() :] if m else b""


def _mac(key: bytes, copy_id: str, destination: str, created_ms: int, body: bytes) -> str:
    return _mac_of_digest(key, copy_id, destination, created_ms, hashlib.sha256(body).hexdigest())


def _mac_of_digest(key: bytes, copy_id: str, destination: str, created_ms: int, digest: str) -> str:
    text = "\0".join((_VERSION, copy_id, destination.casefold(), str(created_ms), digest))
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def make_stamp(copy_id: str, destination: str, created_ms: int, body: bytes, key: bytes) -> str:
    """The header value stamping a message with this body for ``destination``."""
    return make_stamp_of_parts(copy_id, destination, created_ms, (body,), key)


def make_stamp_of_parts(
    copy_id: str, destination: str, created_ms: int, body: Iterable[Buffer], key: bytes
) -> str:
    """:func:`make_stamp` of the body that ``body``'s parts make joined (hashed part by part)."""
    if key_problem(key):
        raise StampKeyError(f"stamp key: {key_problem(key)}")
    digest = hashlib.sha256()
    for part in body:
        digest.update(part)
    mac = _mac_of_digest(key, copy_id, destination, created_ms, digest.hexdigest())
    # percent-encoded: a quoted local part may hold ";" or blanks, and the field stays ASCII
    to = quote(destination, safe="@.-_+")
    return f"{_VERSION}; copy={copy_id}; to={to}; t={created_ms}; mac={mac}"


# What a builder writes where the stamp goes; :func:`stamp_message` replaces it once the body,
# which the MAC covers, exists.
PLACEHOLDER = "pending"
_PLACEHOLDER_FIELD = f"{HEADER}: {PLACEHOLDER}\r\n".encode("ascii")


def stamp_head(head: bytes, value: str) -> bytes:
    """The header section ``head`` of a message we built with the stamp ``value`` in place of
    its :data:`PLACEHOLDER` field (or as its first field when it has none)."""
    field = f"{HEADER}: {value}\r\n".encode("ascii")
    at = head.find(_PLACEHOLDER_FIELD)
    if at == 0 or (at > 0 and head[at - 1 : at] == b"\n"):
        return head[:at] + field + head[at + len(_PLACEHOLDER_FIELD) :]
    return field + head


def stamp_message(
    message: bytes, *, copy_id: str, destination: str, created_ms: int, key: bytes
) -> bytes:
    """``message`` with our stamp in place of its :data:`PLACEHOLDER` field (or as its first
    field when it has none); its body, which the MAC covers, unchanged."""
    body = body_of(message)
    head = message[: len(message) - len(body)]
    return stamp_head(head, make_stamp(copy_id, destination, created_ms, body, key)) + body


def parse_stamp(value: str) -> dict[str, str]:
    fields = {}
    for part in value.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields[k.strip().lower()] = v.strip()
    return fields


@dataclass(frozen=True)
class Stamp:
    """A verified stamp: the copy it was made for and the one destination it may exempt."""

    copy_id: str
    destination: str
    created_ms: int


def verify_stamp(
    value: str | None,
    message: bytes,
    keys: Sequence[bytes],
    *,
    received_ms: int,
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
) -> Stamp | None:
    """The stamp when ``value`` is one of ours made for this very ``message`` (its body) under
    one of ``keys`` (current, then previous), no older than ``max_age_seconds`` when the
    message was received; None for anything else (no key, version 1, a forged or lifted MAC,
    an expired stamp). ``received_ms`` is the receive time, not the clock, so a decision
    re-made later (the audit) gives the same answer."""
    if not value or not keys:
        return None
    if value.strip().split(";", 1)[0].strip() != _VERSION:
        return None
    fields = parse_stamp(value)
    copy_id, to, created, mac = (fields.get(k, "") for k in ("copy", "to", "t", "mac"))
    destination = unquote(to) if to.isascii() else ""  # undecodable: U+FFFD, no MAC match
    if not (copy_id and destination and created.isascii() and created.isdigit()):
        return None
    if not _HEX64.fullmatch(mac):
        return None
    created_ms = int(created)
    if (
        received_ms - created_ms > max_age_seconds * 1000
        or created_ms - received_ms > CLOCK_SKEW_MS
    ):
        return None
    body = body_of(message)
    for key in keys:
        if hmac.compare_digest(_mac(key, copy_id, destination, created_ms, body), mac):
            return Stamp(copy_id, destination, created_ms)
    return None
