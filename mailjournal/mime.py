"""The MIME toolkit of the messages we build (pure: no I/O): journal reports, NDRs and DSNs.

Every message is assembled byte by byte by its builder rather than by ``email.generator``: the
generator re-folds and may re-encode a parsed ``message/rfc822`` part, and an archive or a sender
must receive exactly the bytes ingest accepted. The header fields are still produced by the
standard library's ``email.policy`` (folding, RFC 2047 encoding), fed only with values that were
decoded and stripped of CR, LF and other control characters first, so nothing from the original
can inject a header or a line of a report.

Nothing here may fail a build: a field that cannot be rendered is written as escaped ASCII and
counted in :data:`RENDER_FALLBACKS`, as are the builders' own fallbacks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email import policy
from email.header import Header
from email.headerregistry import UnstructuredHeader
from email.quoprimime import body_encode
from email.utils import format_datetime
from typing import Any

from prometheus_client import Counter

from mailjournal.addresses import domain_of
from mailjournal.smtp.wire import CRLF, MAX_LINE, BodyFacts, Buffer, contains

log = logging.getLogger(__name__)

RENDER_FALLBACKS = Counter(
    "mailjournal_delivery_render_fallbacks_total",
    "Messages built in a fallback form because rendering raised (a field the builders could not "
    "render; the copy still goes out)",
    ["what"],  # field, report (sent as the unchanged original), ndr (minimal), sender_dsn
)
# series at 0 from the start, so rate()/increase() and alerts see the first event
for _what in ("field", "report", "ndr", "sender_dsn"):
    RENDER_FALLBACKS.labels(_what)


# keeps TAB; C1 controls too: NEL (U+0085) and the separators U+2028/2029 break lines for
# readers such as Python's str.splitlines, so a recipient could gain a line in the report
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"[ \t]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MSGID_UNSAFE = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]")

_SMTP_ASCII = policy.SMTP
_SMTP_UTF8 = policy.SMTPUTF8


def clean_text(value: str | None) -> str:
    """One line of display text: surrogates from undecodable bytes made visible, CR/LF and other
    control characters replaced by a space, runs of blanks collapsed, ends stripped. The result
    always encodes as UTF-8."""
    if not value:
        return ""
    if value.isascii() and value.isprintable():
        # the common case, three regex passes cheaper (every report field goes through here):
        # printable ASCII has no surrogate, no control and no TAB, only runs of spaces
        return (_SPACES.sub(" ", value) if "  " in value else value).strip()
    return _clean_text(value)


def _clean_text(value: str) -> str:
    """:func:`clean_text` of any text (the general case)."""
    if _SURROGATE.search(value):
        # undecodable bytes (U+DC80..U+DCFF from surrogateescape) are re-read as UTF-8; a lone
        # surrogate of any other origin (an encoded word in UTF-7 or unicode-escape decodes to
        # one) has no encoding at all: it is written as an ASCII escape
        with contextlib.suppress(UnicodeError):
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        value = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    value = _CONTROL.sub(" ", value)
    return _SPACES.sub(" ", value).strip()


def safe_ascii(value: object) -> str:
    """The last resort for a field nothing else could render: its raw text as printable ASCII,
    anything else (8-bit, surrogates) as backslash escapes. Cannot raise."""
    text = str(value or "").encode("ascii", "backslashreplace").decode("ascii")
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def render_field(render: Callable[[Any], str], raw: Any) -> str:
    """``render(raw)``, or ``raw`` in :func:`safe_ascii` form when rendering raises (of any type:
    a library bug, a recursion, an encoding): a report never loses a field to an exception."""
    try:
        return render(raw)
    except Exception:
        log.warning(
            "a summary field could not be rendered; written as escaped ASCII", exc_info=True
        )
        RENDER_FALLBACKS.labels("field").inc()
        return safe_ascii(raw)


# a summary field shows at most this much of a raw header value (the attached original has all
# of it): the standard library's decoding and folding take quadratic time, and a 100 KB subject
# of encoded words took over two seconds per build (found by the fuzzer)
MAX_SUMMARY_CHARS = 4096
TRUNCATED = " [...]"


def decode_header_text(raw: str | None) -> str:
    """A raw header value (RFC 2047 encoded-words possibly inside) as clean display text; one
    longer than :data:`MAX_SUMMARY_CHARS` is cut at a blank before that and marked ``[...]``."""
    if not raw:
        return ""
    if len(raw) > MAX_SUMMARY_CHARS:
        cut = raw.rfind(" ", 0, MAX_SUMMARY_CHARS)
        return decode_header_text(raw[: cut if cut > 0 else MAX_SUMMARY_CHARS]) + TRUNCATED
    # unfold first: a folded raw value must not leave its CRLF for the header parser
    text = clean_text(raw)
    if "=?" not in text:
        # nothing to decode: the parser gives clean text back unchanged (property-tested), at
        # a tenth of a report's build time
        return text
    # a malformed encoded word: show the raw text rather than nothing
    with contextlib.suppress(Exception):
        text = str(policy.default.header_factory("subject", text))
    return clean_text(text)


def fold_header(name: str, value: str, *, utf8: bool = False) -> bytes:
    """``Name: value`` folded and encoded by the standard library, value cleaned first; if the
    library raises, the value in :func:`safe_ascii` form as encoded words."""
    try:
        return _fold_header(name, value, utf8=utf8)
    except Exception:
        log.warning("header %s could not be folded; written as escaped ASCII", name, exc_info=True)
        RENDER_FALLBACKS.labels("field").inc()
        text = safe_ascii(value)
        return _encoded_words(name, text) if text else f"{name}:".encode("ascii") + CRLF


def _fold_header(name: str, value: str, *, utf8: bool) -> bytes:
    pol = _SMTP_UTF8 if utf8 else _SMTP_ASCII
    text = clean_text(value)
    if (
        name.lower() in _UNSTRUCTURED
        and text.isascii()
        and "=?" not in text
        and len(name) + 2 + len(text) <= _FOLD_AT
    ):
        # one short line of ASCII words, or none: exactly what the policy folds it to
        # (property-tested), without its parser, which cost a third of a report's build
        return (f"{name}: {text}" if text else f"{name}:").encode("ascii") + CRLF
    return _policy_fold(name, text, pol)


def _policy_fold(name: str, text: str, pol: Any) -> bytes:
    """``Name: text`` (cleaned text) folded and encoded by the policy ``pol``."""
    if name.lower() == "subject" and "=?" in text:
        # the policy would decode the encoded-word look-alikes (see below), and raise on one
        # that decodes to a lone surrogate
        return _encoded_words(name, text)
    # a header object, not a str: ``policy.fold`` passes a short str through unencoded
    header = pol.header_factory(name, text)
    folded = header.fold(policy=pol)
    empty_first = f"{name}:\r\n "
    if folded.startswith(empty_first):
        # the folder breaks before a first word too long for the first line; a parser then
        # reads that fold's blank into the value (" 00...", where the text says "00...")
        folded = f"{name}: " + folded[len(empty_first) :]
    if isinstance(header, UnstructuredHeader) and (
        "=?" in text or any(len(line.encode()) > MAX_LINE for line in folded.split("\r\n"))
    ):
        # The policy decodes encoded-word look-alikes in display text a second time (so the
        # header would differ from the report's text), and never splits a word, so a long one
        # overruns 998 octets: encoded-words carry any text, folded at 78 columns.
        return _encoded_words(name, text)
    return folded.encode("utf-8" if pol is _SMTP_UTF8 else "ascii")


# the header names the policies read as unstructured text (an address field, such as To, is
# parsed and rendered anew, so it never takes the short cut)
_UNSTRUCTURED = frozenset({"subject", "comments"})
# both policies fold at this column; unknown (None), the short cut is off
_FOLD_AT = min(_SMTP_ASCII.max_line_length or 0, _SMTP_UTF8.max_line_length or 0)


def _encoded_words(name: str, text: str) -> bytes:
    encoded = Header(text, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=78)
    return f"{name}: {encoded}".encode("ascii") + CRLF


def simple_header(name: str, value: str) -> bytes:
    """A header whose value we built from safe parts (ids, dates, validated addresses)."""
    value = clean_text(value)
    line = f"{name}: {value}" if value else f"{name}:"
    return line.encode("utf-8") + CRLF


def message_id_for(copy_id: str, sender: str) -> str:
    """``<copy_id@sender-domain>``: the same copy always carries the same Message-ID, so an archive
    recognises a duplicate send."""
    local = _MSGID_UNSAFE.sub("_", copy_id) or "copy"
    return f"<{local}@{domain_of(sender) or 'localhost'}>"


def rfc5322_date(ms: int) -> str:
    """The RFC 5322 date-time (UTC) of ``ms`` milliseconds since the epoch, to the second."""
    return _date_of_second(ms // 1000)


# Every report, NDR and Received field carries one; the stdlib formats each afresh (a datetime,
# a time tuple, then the text), and under load most fall in a second already formatted.
@functools.lru_cache(maxsize=64)
def _date_of_second(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, tz=UTC))


def choose_boundary(seed: str, *contents: Buffer) -> str:
    """A deterministic boundary (same copy, same bytes) that occurs in none of ``contents``.

    ``=_`` cannot appear in quoted-printable or base64 text, and the hash makes a collision with
    the original vanishingly unlikely; the loop makes it impossible."""
    n = 0
    while True:
        digest = hashlib.sha256(f"{seed}/{n}".encode()).hexdigest()[:32]
        boundary = f"=_mailjournal_{digest}"
        marker = b"--" + boundary.encode("ascii")
        if not any(contains(c, marker) for c in contents):
            return boundary
        n += 1


def body_transfer_encoding(data: bytes) -> str:
    """The Content-Transfer-Encoding that truthfully describes ``data`` (RFC 2045 §2.7-2.9)."""
    return BodyFacts.of(data).transfer_encoding()


def text_part(lines: Iterable[str]) -> tuple[bytes, str]:
    """(body, transfer encoding) of a text/plain; charset=utf-8 part: 7bit when ASCII with
    lines of at most 998 octets, else quoted-printable so the report stays 7-bit clean outside
    the attached original."""
    text = "\r\n".join(lines) + "\r\n"
    raw = text.encode("utf-8")
    # a long subject or server reply can pass 998 octets: quoted-printable wraps it softly
    if raw.isascii() and all(len(line) <= MAX_LINE for line in raw.split(CRLF)):
        return raw, "7bit"
    encoded = body_encode(raw.decode("latin-1"), maxlinelen=76, eol="\r\n")
    if not encoded.endswith("\r\n"):
        encoded += "\r\n"
    return encoded.encode("ascii"), "quoted-printable"


def combine_encodings(*encodings: str) -> str:
    """A multipart entity's encoding is the widest of its parts' (RFC 2045 §6.4)."""
    order = ["7bit", "quoted-printable", "8bit", "binary"]
    widest = max(order.index(e) for e in encodings)
    return "7bit" if widest <= 1 else order[widest]


def header_block(message: bytes) -> bytes:
    """The header section of ``message`` (up to and including the blank line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = message.find(sep)
        if end >= 0:
            return message[: end + len(sep)]
    return message if message.endswith(b"\n") else message + CRLF
