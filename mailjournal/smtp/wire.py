"""A message as it goes on the wire: the parts it was built from and what is known of its bytes,
learnt once (pure: no I/O).

Everything delivery and the relay must know of a message's bytes before sending it -- a CR or LF
outside a CRLF, a NUL, a line over 998 octets, 8-bit octets, a line that starts with "." -- is
one :class:`BodyFacts`, computed once per original. A journal report is the small parts we build
around the original (its header section, the summary part, the closing delimiter) and the
original itself, unjoined: the report's facts are those of its parts, so the megabyte in the
middle is scanned once for the report's transfer encoding, and not again for the SMTP line-ending
check, the SIZE and 8BITMIME decisions and the dot-stuffing, as it was when each step rescanned the
joined report. The DATA payload stuffs only the parts that have a line starting with "."
(:meth:`Outgoing.payload`); it is byte for byte the payload the single-buffer functions
:func:`wire_bytes` and :func:`dot_stuffed` make of the joined message (property-tested).

A part's bytes may be a ``memoryview`` of the consumed record (the original, decoded with
``tail_view``): it goes on the wire as it is (:meth:`Outgoing.payload_parts`), without a copy.
Where a part is searched, it is searched as ``bytes`` (:func:`contains`): ``in`` on a memoryview
compares its integers and would find nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mailjournal.smtp._lines import long_line
from schemas.events import BodyFacts as BodyFactsRecord

CRLF = b"\r\n"
# RFC 5322 §2.1.1: 998 characters per line at most, CRLF excluded
MAX_LINE = 998

_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HEADER_END = re.compile(rb"\r\n\r\n")

Buffer = bytes | memoryview


def contains(data: Buffer, needle: bytes) -> bool:
    """``needle in data`` for bytes or a memoryview. A memoryview is first ruled out through the
    buffer it views (no copy; the original is most of a consumed record, so a needle absent from
    the record is absent from it), and only otherwise searched exactly in a copy."""
    if isinstance(data, bytes):
        return needle in data
    whole = data.obj
    if isinstance(whole, bytes) and needle not in whole:
        return False
    return needle in data.tobytes()


def has_bare_eol(data: bytes) -> bool:
    """A CR or LF that is not part of a CRLF (counting is much faster than a regex scan)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


def has_long_line(data: bytes) -> bool:
    """A line over 998 octets (a line's CR belongs to its CRLF, not to the 998). Native
    (:mod:`mailjournal.smtp._lines`): it probes every 499th octet's block for a LF instead of
    splitting the message into lines, 0.6 us per 100 KB."""
    return long_line(data, MAX_LINE)


def wire_bytes(data: bytes) -> bytes:
    """SMTP DATA is CRLF lines (RFC 5321 §2.3.8): a bare CR or LF goes out as CRLF. Originals
    accepted by ingest have none (it refuses or normalises them), so they pass unaltered."""
    return _BARE_EOL.sub(CRLF, data) if has_bare_eol(data) else data


def dot_stuffed(data: bytes) -> bytes:
    """The DATA payload of CRLF-line ``data`` (:func:`wire_bytes`): a dot that starts a line is
    doubled, a final CRLF ensured, the ``.`` terminator appended (RFC 5321 §4.5.2). The same
    bytes as ``smtplib.SMTP.data`` sends, with two ``bytes`` scans instead of two regex passes."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(CRLF):
        data += CRLF
    return data + b".\r\n"


@dataclass(frozen=True, slots=True)
class BodyFacts:
    """What a message's bytes are, as its senders and its transfer encoding need to know."""

    bare_eol: bool  # a CR or LF outside a CRLF
    nul: bool
    long_line: bool  # a line over 998 octets
    eight_bit: bool
    dot_line: bool  # a line (the first one included) starts with "."

    @classmethod
    def of(cls, data: bytes) -> BodyFacts:
        bare = has_bare_eol(data)
        return cls(
            bare_eol=bare,
            nul=b"\x00" in data,
            long_line=has_long_line(data),
            eight_bit=not data.isascii(),
            # without a bare LF every line start after the first follows a CRLF
            dot_line=data.startswith(b".") or (b"\n." in data if bare else b"\r\n." in data),
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> BodyFacts | None:
        """The facts an event carries (``body_facts``), None when it carries none."""
        if not record:
            return None
        return cls(
            bare_eol=bool(record["bare_eol"]),
            nul=bool(record["nul"]),
            long_line=bool(record["long_line"]),
            eight_bit=bool(record["eight_bit"]),
            dot_line=bool(record["dot_line"]),
        )

    def record(self) -> BodyFactsRecord:
        return {
            "bare_eol": self.bare_eol,
            "nul": self.nul,
            "long_line": self.long_line,
            "eight_bit": self.eight_bit,
            "dot_line": self.dot_line,
        }

    def followed_by(self, other: BodyFacts) -> BodyFacts:
        """The facts of this part's bytes followed by ``other``'s, when this part ends with a
        CRLF (a prefix of whole header lines): no line ending or line spans the two."""
        return BodyFacts(
            bare_eol=self.bare_eol or other.bare_eol,
            nul=self.nul or other.nul,
            long_line=self.long_line or other.long_line,
            eight_bit=self.eight_bit or other.eight_bit,
            dot_line=self.dot_line or other.dot_line,
        )

    def transfer_encoding(self) -> str:
        """The Content-Transfer-Encoding that truthfully describes the bytes (RFC 2045
        §2.7-2.9): ``7bit`` ASCII lines, ``8bit`` with 8-bit octets, ``binary`` with NUL, bare
        CR/LF or lines over 998 octets."""
        if self.nul or self.bare_eol or self.long_line:
            return "binary"
        return "8bit" if self.eight_bit else "7bit"


@dataclass(frozen=True, slots=True)
class Part:
    data: Buffer
    facts: BodyFacts

    @classmethod
    def of(cls, data: Buffer, facts: BodyFacts | None = None) -> Part:
        return cls(data, facts if facts is not None else BodyFacts.of(bytes(data)))


class Outgoing:
    """A message as parts (joined, they are the message) with the facts of each.

    A boundary between two parts falls after a CRLF or inside a line: a CRLF split across two
    parts shows as a bare CR and a bare LF in them, and a message with any bare line ending is
    joined and normalised before it is sent (:meth:`wire_form`), so stuffing each part on its own
    is stuffing the whole."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: Iterable[Part]) -> None:
        self.parts = tuple(parts)
        self.size = sum(len(p.data) for p in self.parts)

    @classmethod
    def of(cls, data: Buffer, facts: BodyFacts | None = None) -> Outgoing:
        return cls([Part.of(data, facts)])

    def data(self) -> bytes:
        """The whole message (a copy of the parts; for the rare paths that need one buffer)."""
        if len(self.parts) == 1:
            return bytes(self.parts[0].data)  # the part itself when it is bytes
        return b"".join(p.data for p in self.parts)

    @property
    def eight_bit(self) -> bool:
        return any(p.facts.eight_bit for p in self.parts)

    @property
    def bare_eol(self) -> bool:
        return any(p.facts.bare_eol for p in self.parts)

    def header_section(self) -> bytes:
        """The bytes that hold the header section: the first part when it has the blank line
        that ends it (a report's is its own part), else the whole message."""
        first = self.parts[0].data if self.parts else b""
        if isinstance(first, memoryview):
            end = _HEADER_END.search(first)  # stops at the header's end, not the body's
            return bytes(first[: end.end()]) if end else self.data()
        return first if b"\r\n\r\n" in first else self.data()

    def wire_form(self) -> Outgoing:
        """This message with CRLF line endings only (RFC 5321 §2.3.8): itself when no part has a
        bare CR or LF, else the joined message normalised (and its facts learnt again)."""
        if not self.bare_eol:
            return self
        return Outgoing.of(wire_bytes(self.data()))

    def payload(self) -> bytes:
        """The DATA payload of :meth:`wire_form` in one buffer (:meth:`payload_parts` joined)."""
        return b"".join(self.payload_parts())

    def payload_parts(self) -> list[Buffer]:
        """The DATA payload of :meth:`wire_form`: dot-stuffed, CRLF-ended, with the terminator,
        as buffers to write in order. Only the parts that have a line starting with "." are
        stuffed (a copy of those); the others are written as they are."""
        msg = self.wire_form()
        out: list[Buffer] = []
        line_start = True
        for part in msg.parts:
            data = part.data
            if not data:
                continue
            if part.facts.dot_line:
                data = bytes(data)
                if line_start and data.startswith(b"."):
                    out.append(b".")
                data = data.replace(b"\r\n.", b"\r\n..")
            out.append(data)
            line_start = data[-1:] == b"\n"
        if not out or out[-1][-2:] != CRLF:
            out.append(CRLF)
        out.append(b".\r\n")
        return out
