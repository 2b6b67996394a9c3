"""Selected header fields of a message, read from its header block only.

The message is cut at the first empty line first: Python's ``BytesHeaderParser`` would read the
whole body into a payload string, and ingest must never parse a body on its hot path. The field
reader here follows ``email.feedparser`` with ``policy.compat32`` (the same lines end the header
block, the same unix-from and defect handling; ``tests/test_ingest_policy.py`` and
``tests/test_properties_headers.py`` compare them), at a tenth of its cost, with one deliberate
difference: blanks between a field name and its colon (``Subject : x``) are RFC 5322's obsolete
syntax, which a parser must accept (section 4.5.3), so such a line is a field, not the body. Values are the raw field bodies, unfolded (CRLF before WSP
removed), not MIME-decoded; the first occurrence wins; 8-bit bytes are kept when they are UTF-8
(RFC 6532) and replaced (U+FFFD) otherwise; odd Message-IDs stay exactly as sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import cast

from schemas import JOURNAL_STAMP_HEADER, MS_JOURNAL_REPORT_HEADER
from schemas.events import SelectedHeaders

# a header block larger than this is cut: the fields we want are near the top anyway
MAX_HEADER_BYTES = 256 * 1024

# field name (lower case) -> SelectedHeaders key
FIELDS: dict[str, str] = {
    "message-id": "message_id",
    "subject": "subject",
    "from": "from_",
    "to": "to",
    "cc": "cc",
    "date": "date",
    "auto-submitted": "auto_submitted",
    JOURNAL_STAMP_HEADER.lower(): "journal_stamp",
    MS_JOURNAL_REPORT_HEADER.lower(): "ms_journal_report",
}

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_NEWLINE = re.compile(rb"\r\n|\r|\n")
# email.feedparser.headerRE (what may start a line of the header block), plus the obsolete
# blanks before the colon
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*[ \t]*:|[\t ]")
_OBS_FROM_FIELD = re.compile(rb"From[ \t]*:")


def header_block(raw: bytes) -> bytes:
    """The bytes up to and including the line ending before the first empty line."""
    if raw.startswith((b"\r\n", b"\n")):
        return b""  # no header fields at all
    m = _BLANK_LINE.search(raw, 0, MAX_HEADER_BYTES)
    if m is None:
        return raw[:MAX_HEADER_BYTES]
    # keep the line ending of the last field line
    return raw[: m.start() + (2 if raw[m.start()] == 13 else 1)]


def header_fields(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, unfolded raw value) of each field, as ``email.feedparser`` with compat32 sees
    them."""
    lines = []
    for line in _NEWLINE.split(block):
        if not line or not _HEADER_LINE.match(line):
            break  # the empty line, or the first body line (a missing separator)
        lines.append(line)
    name: bytes | None = None
    parts: list[bytes] = []
    last = len(lines) - 1
    for lineno, line in enumerate(lines):
        if line[0] in b" \t":
            if name is not None:  # a continuation line; one before any field is ignored
                parts.append(line)
            continue
        if name is not None:
            yield name, b"".join(parts)
            name = None
        if line.startswith(b"From ") and not _OBS_FROM_FIELD.match(line):
            if lineno == last and lineno != 0:
                break  # looks like the first body line
            continue  # the mbox "From " line, or a misplaced one: not a field
        colon = line.find(b":")
        if colon == 0:
            continue  # no field name
        name, parts = line[:colon].rstrip(b" \t"), [line[colon + 1 :].lstrip(b" \t")]
    if name is not None:
        yield name, b"".join(parts)


def field_name(raw_name: bytes) -> str:
    return raw_name.decode("ascii", "replace").lower()


def empty_headers() -> dict[str, str | None]:
    return dict.fromkeys(FIELDS.values())


def selected_headers(raw: bytes) -> SelectedHeaders:
    """The SelectedHeaders record of ``raw`` (every key present, None when absent)."""
    out = empty_headers()
    block = header_block(raw)
    if block:
        for name, value in header_fields(block):
            key = FIELDS.get(field_name(name))
            if key is not None and out[key] is None:
                out[key] = value.strip(b" \t").decode("utf-8", "replace")
    # FIELDS' values are the record's keys, every one (tests/test_schemas.py checks it)
    return cast(SelectedHeaders, out)


def received_count(raw: bytes) -> int:
    """Number of ``Received:`` trace fields: the hop count of the loop check on relay
    listeners (RFC 5321 section 6.3)."""
    return sum(1 for name, _ in header_fields(header_block(raw)) if field_name(name) == "received")
