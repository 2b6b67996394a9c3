"""Hypothesis strategies for hostile mail input, shared by the property tests (issue #7).

Text and addresses come in the shapes that break mail software: CR/LF header injection,
NUL and other controls, RFC 2047 encoded-words (well- and ill-formed, some decoding to CR/LF),
8-bit bytes that are not UTF-8, SMTPUTF8 and IDN addresses, quoted local parts, lines past
the 998-octet limit. Raw messages are built from a field list so a test knows the header
section they carry: folded, duplicated and missing fields, mixed line endings, header-looking
lines in the body, broken MIME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import strategies as st

# -- text ---------------------------------------------------------------------------------------

INJECTIONS = [
    "\r\nBcc: x@evil.example",
    "\nBcc: x@evil.example",
    "\rCc: y@evil.example",
    "\r\n\r\nfake body",
    "\r\n X-Folded: continuation",
    "=?utf-8?q?caf=C3=A9?=",
    "=?utf-8?b?w6kgw7Y=?=",
    "=?iso-8859-1?q?=E4=F6?=",
    "=?utf-8?q?a=0D=0ABcc:_x@evil.example?=",  # decodes to CR LF
    "=?utf-8?b?DQpCY2M6IHhAZXZpbC5leGFtcGxl?=",  # base64 of CR LF Bcc: ...
    "=?utf-8?q?=3D=3Futf-8=3Fq=3FBcc=3A_x=3F=3D?=",  # decodes to an encoded-word
    "=?bogus-charset?q?zz?=",
    "=?utf-8?x?broken?=",
    "=?utf-8?q?unterminated",
    "\x00",
    "\x85",  # NEL: a line break to str.splitlines
    "\u2028",
    "\ufeff",
    "<>",
    '"quoted, with comma" <a@b.example>',
    "group: a@b.example, c@d.example;",
    "(comment) a@b.example",
]
CONTROLS = "\x00\x01\x08\t\n\x0b\x0c\r\x1b\x7f\x85\u2028\u2029"


def long_text() -> st.SearchStrategy[str]:
    """Lines near and past 998 octets, with and without places to fold."""
    return st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(["x", "word ", "ü", "=?utf-8?q?a?= ", "é-"]),
        st.integers(min_value=200, max_value=1200),
    )


def hostile_text(max_atoms: int = 6) -> st.SearchStrategy[str]:
    """A display string an attacker controls (subject, address text, server reply)."""
    atom = st.one_of(
        st.text(max_size=12),
        st.sampled_from(INJECTIONS),
        st.text(alphabet=CONTROLS + "ab :", max_size=6),
        st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x2FFF), max_size=6),
    )
    short = st.lists(atom, max_size=max_atoms).map("".join)
    return st.one_of(short, short, short, short, short, long_text())


# -- addresses ----------------------------------------------------------------------------------

_ATEXT = "abcXYZ0129!#$%&'*+/=?^_`{|}~-"
ascii_local = st.text(alphabet=_ATEXT, min_size=1, max_size=10)
# SMTPUTF8 (RFC 6531); sharp s, the sigmas, dotted and dotless i fold differently under
# lower() and casefold()
utf8_local = st.text(
    alphabet=st.sampled_from("äöüßjørgΣ\u03c3\u03c2İ\u0131Ł日本語чё"), min_size=1, max_size=8
)
quoted_local = st.text(alphabet=' abc.,:;<>@[]()"\\', max_size=10).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
dotted_local = st.lists(ascii_local, min_size=2, max_size=3).map(".".join)
local_part = st.one_of(ascii_local, ascii_local, dotted_local, utf8_local, quoted_local)

EXTERNAL_DOMAINS = [
    "example.net",
    "ext.example",
    "bücher.example",  # IDN, U-label
    "xn--bcher-kva.example",  # the same domain as an A-label
    "[192.0.2.7]",  # address literal
    "corp.example.evil.example",  # ends with, but is not, the accepted domain
    "evilcorp.example",
]


def address(domains: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A syntactically valid mailbox (RFC 5321/6531) at one of ``domains``."""
    return st.builds(lambda lp, d: f"{lp}@{d}", local_part, domains)


def case_variant(value: str) -> st.SearchStrategy[str]:
    """``value`` with the case of some characters flipped (mail addresses compare
    case-insensitively in directories)."""
    return st.integers(min_value=0, max_value=2**64 - 1).map(
        lambda bits: "".join(
            c.swapcase() if bits >> (i % 64) & 1 else c for i, c in enumerate(value)
        )
    )


GARBAGE_ADDRESSES = [
    "",
    " ",
    "no-at-sign",
    "a@",
    "@corp.example",
    "a@b@corp.example",
    "<sup@corp.example>",
    "Sup <sup@corp.example>",
    "sup@corp.example, other@corp.example",
    "sup@corp.example\r\nBcc: x@evil.example",
    "sup@corp.example\x00",
    "x" * 300 + "@corp.example",
    "a..b@corp.example",
    "a b@corp.example",
    "a@-corp.example",
]


def garbage_address() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(GARBAGE_ADDRESSES), hostile_text(3))


# -- raw messages -------------------------------------------------------------------------------

EOLS = [b"\r\n", b"\n", b"\r"]
SELECTED_NAMES = [
    "Message-ID",
    "Subject",
    "From",
    "To",
    "Cc",
    "Date",
    "Auto-Submitted",
    "X-MailJournal-Stamp",
    "X-MS-Journal-Report",
    "Received",
]
_NAME_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ":")


@dataclass(frozen=True)
class RawField:
    name: bytes
    lines: tuple[bytes, ...]  # first line after "Name:", then continuation lines (start WSP)
    eols: tuple[bytes, ...]  # the line ending after each line

    @property
    def unfolded(self) -> bytes:
        """The value as the header reader must return it: CRLF before WSP removed, leading
        blanks of the first line dropped."""
        return self.lines[0].lstrip(b" \t") + b"".join(self.lines[1:])

    def render(self) -> bytes:
        out = [self.name + b":" + self.lines[0] + self.eols[0]]
        out += [line + eol for line, eol in zip(self.lines[1:], self.eols[1:], strict=True)]
        return b"".join(out)


@dataclass(frozen=True)
class RawMessage:
    fields: tuple[RawField, ...]
    header: bytes  # the rendered fields, each line with its line ending
    separator: bytes  # the empty line
    body: bytes

    @property
    def raw(self) -> bytes:
        return self.header + self.separator + self.body


def header_value_bytes() -> st.SearchStrategy[bytes]:
    """A field value: text with NUL, 8-bit (UTF-8 and not), encoded-words, no line breaks."""
    text = hostile_text(4).map(lambda s: s.replace("\r", " ").replace("\n", " "))
    return st.one_of(
        text.map(lambda s: s.encode("utf-8")),
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b"caf\xe9 latin-1", b"\xff\xfe", b"From x", b" \t", b"", b"x" * 1100]),
    )


def field_name() -> st.SearchStrategy[bytes]:
    selected = st.sampled_from(SELECTED_NAMES).flatmap(case_variant)
    other = st.text(alphabet=_NAME_CHARS, min_size=1, max_size=12)
    # "From " would start an mbox line; any other name (no space, no colon) is a field
    return st.one_of(selected, selected, other.filter(lambda n: " " not in n)).map(
        lambda n: n.encode("ascii")
    )


@st.composite
def raw_field(draw: st.DrawFn, name: bytes | None = None) -> RawField:
    name = name if name is not None else draw(field_name())
    value = draw(header_value_bytes())
    # a fold is a line ending inserted before a blank (RFC 5322 §2.2.3)
    blanks = [i for i, b in enumerate(value) if b in b" \t"]
    folds = sorted(draw(st.sets(st.sampled_from(blanks), max_size=3))) if blanks else []
    lead = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
    pieces, prev = [], 0
    for i in folds:
        pieces.append(value[prev:i])
        prev = i
    pieces.append(value[prev:])
    pieces[0] = lead + pieces[0]
    eols = tuple(draw(st.sampled_from(EOLS)) for _ in pieces)
    return RawField(name, tuple(pieces), eols)


BODY_LINES = [
    b"Subject: BODY-MARKER subject in the body",
    b"To: body-marker@evil.example",
    b"Received: from BODY-MARKER",
    b"X-MailJournal-Stamp: v1; copy=BODY-MARKER",
    b"Message-ID: <BODY-MARKER@evil.example>",
    b" continuation BODY-MARKER",
    b"--boundary-never-closed",
    b"Content-Type: multipart/mixed; boundary=missing",
    b"Content-Transfer-Encoding: base64",
    b"!!!not base64!!!",
    b".",
    b"..",
    b"\x00\x00 NUL",
    b"8-bit \xe4\xf6\xfc and \xc3\xa4",
    b"y" * 1200,
    b"",
]
BODY_MARKER = b"BODY-MARKER"


@st.composite
def raw_message(draw: st.DrawFn, max_fields: int = 8) -> RawMessage:
    """A message with a known header section; its body is full of header-looking lines."""
    fields = draw(st.lists(raw_field(), max_size=max_fields))
    if fields and draw(st.booleans()):
        fields.append(draw(raw_field(name=fields[0].name)))  # a duplicate of the first
    header = b"".join(f.render() for f in fields)
    # the empty line: after a bare CR the next line ending must not be LF (CR LF is one break)
    if header.endswith(b"\r"):
        separator = draw(st.sampled_from([b"\r", b"\r\n"]))
    elif fields:
        separator = draw(st.sampled_from(EOLS))
    else:
        separator = draw(st.sampled_from([b"\r\n", b"\n"]))
    body_lines = draw(
        st.lists(st.one_of(st.sampled_from(BODY_LINES), st.binary(max_size=20)), max_size=6)
    )
    eol = draw(st.sampled_from(EOLS))
    body = eol.join(body_lines) + draw(st.sampled_from([b"", eol]))
    return RawMessage(tuple(fields), header, separator, body)


def arbitrary_message() -> st.SearchStrategy[bytes]:
    """Any bytes, biased towards things that look like mail."""
    mailish = st.lists(
        st.one_of(
            st.sampled_from([*BODY_LINES, b"Subject: a", b"From a@b Mon Jan 1", b":", b" "]),
            st.binary(max_size=16),
        ),
        max_size=10,
    ).flatmap(lambda lines: st.sampled_from(EOLS).map(lambda eol: eol.join(lines)))
    return st.one_of(st.binary(max_size=200), mailish, raw_message().map(lambda m: m.raw))


# -- oracles --------------------------------------------------------------------------------------

_OBS_COLON = re.compile(rb"(?:^|(?<=[\r\n]))([\x21-\x39\x3b-\x7e]+)[ \t]+:")


def obs_colons_closed(raw: bytes) -> bytes:
    """``raw`` with the blanks of ``name WSP ":"`` lines removed: what ``email.feedparser``
    (compat32) must be given to agree with ingest's header reader, which accepts RFC 5322's
    obsolete blanks before the colon (section 4.5.3) where compat32 ends the header block."""
    return _OBS_COLON.sub(rb"\1:", raw)


# -- hostile structured header fields (issue 13: attack the whole path) -------------------------

STRUCTURED_NAMES = ["To", "Cc", "Bcc", "From", "Sender", "Reply-To", "Message-ID", "References"]
CHARSETS = [
    "utf-8",
    "UTF-8",
    "iso-8859-1",
    "windows-1252",
    "koi8-r",
    "shift_jis",
    "iso-2022-jp",
    "euc-kr",
    "gb18030",
    "big5",
    "utf-16",
    "utf-16-le",
    "utf-32",
    "utf-7",  # "+2AA-" decodes to the lone surrogate U+D800
    "unicode-escape",  # "\\ud800" too
    "raw-unicode-escape",
    "punycode",
    "idna",
    "rot13",
    "base64",
    "utf-8*en",  # RFC 2231 language
    "x-bogus",
    "",
]
EW_PAYLOADS = [b"+2AA-", b"\\ud800", b"\\udcff\\ud800", b"\xed\xa0\x80", b"\x00", b"\r\n", b"\xff"]
# (opening, closing) of the nesting the address parser recurses on, and others
NESTINGS = [("(", ")"), ("g:", ";"), ("<", ">"), ('"', '"'), ("[", "]"), ("(\\", ")"), ("<(", ")>")]


def encoded_word() -> st.SearchStrategy[str]:
    """An RFC 2047 encoded word in any charset, well-formed or not, some decoding to surrogates,
    NUL or CR/LF."""
    payload = st.one_of(st.sampled_from(EW_PAYLOADS), st.binary(max_size=12))

    def render(charset: str, encoding: str, data: bytes) -> str:
        import base64

        if encoding in "bB":
            text = base64.b64encode(data).decode()
        else:
            text = "".join(
                chr(b) if 0x21 <= b <= 0x7E and b not in b"=?_" else f"={b:02X}" for b in data
            )
        return f"=?{charset}?{encoding}?{text}?="

    return st.builds(render, st.sampled_from(CHARSETS), st.sampled_from("bBqQx"), payload)


def nested_value() -> st.SearchStrategy[str]:
    """Deep nesting (comments, groups, angle brackets, quotes, literals), closed or not, around
    an address: thousands of levels make ``email.utils.getaddresses`` recurse."""

    def render(pair: tuple[str, str], depth: int, closed: bool, inner: str) -> str:
        opening, closing = pair
        return " ".join([opening] * depth + [inner] + ([closing] * depth if closed else []))

    return st.builds(
        render,
        st.sampled_from(NESTINGS),
        st.one_of(st.integers(1, 50), st.integers(900, 3000)),
        st.booleans(),
        st.sampled_from(["alice@corp.example", "bob@corp.example", "x@ext.example", ""]),
    )


def many_addresses() -> st.SearchStrategy[str]:
    """Hundreds to thousands of addresses, some with display names, some envelope recipients."""

    def render(n: int, named: bool, domain: str) -> str:
        if named:
            return ", ".join(f'"User {i}, Q." <u{i}@{domain}>' for i in range(n))
        return ", ".join(f"u{i}@{domain}" for i in range(n))

    return st.builds(
        render,
        st.integers(200, 3000),
        st.booleans(),
        st.sampled_from(["corp.example", "ext.example"]),
    )


def structured_value() -> st.SearchStrategy[str]:
    """The text of a hostile To/Cc/From/Message-ID/References ... field."""
    atom = st.one_of(
        nested_value(),
        encoded_word(),
        st.sampled_from(INJECTIONS),
        address(st.sampled_from(["corp.example", *EXTERNAL_DOMAINS])),
        hostile_text(3),
        st.sampled_from(["alice@corp.example", "bob@corp.example", "<a@b>", "g: ;", ",,,"]),
    )
    return st.one_of(
        st.lists(atom, min_size=1, max_size=5).map(" ".join),
        many_addresses(),
        nested_value(),
    )


def fold_text(text: str, width: int = 76) -> bytes:
    """``text`` as a field body folded at blanks into lines of at most ``width`` characters
    (longer words are split, so every line stays far below 998 octets): the shape ingest accepts
    however large the field. CR and LF in the text become blanks; other bytes are kept, UTF-8,
    or their surrogate escapes as the original bytes."""
    words = text.replace("\r", " ").replace("\n", " ").split(" ")
    pieces = [w[i : i + width] for w in words for i in range(0, max(len(w), 1), width)]
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    return "\r\n ".join(lines).encode("utf-8", "surrogateescape")


def _raw_bytes_value() -> st.SearchStrategy[str]:
    """NUL, 8-bit bytes that are not UTF-8, C1 controls: as surrogate escapes, so
    :func:`fold_text` writes the bytes themselves."""
    return st.binary(max_size=40).map(
        lambda b: b.replace(b"\r", b" ").replace(b"\n", b" ").decode("utf-8", "surrogateescape")
    )


@st.composite
def hostile_message(draw: st.DrawFn) -> bytes:
    """A raw message whose structured fields (To, Cc, Bcc, From, Sender, Reply-To, Message-ID,
    References) and Subject are built to break parsers: deep nesting, encoded words in many
    charsets and invalid ones, surrogates, NUL and 8-bit bytes, thousands of addresses, huge
    folded fields. Lines stay within 998 octets, so ingest accepts it (the property is about
    what happens after a 250)."""
    names = draw(st.lists(st.sampled_from([*STRUCTURED_NAMES, "Subject"]), max_size=10))
    fields = []
    for name in names:
        value = draw(
            st.one_of(structured_value(), _raw_bytes_value())
            if name != "Subject"
            else st.one_of(
                st.lists(encoded_word(), min_size=1, max_size=40).map(" ".join),
                hostile_text(4),
                _raw_bytes_value(),
                st.integers(100, 4000).map(lambda n: "=?utf-8?q?=F0=9F=92=A9?= " * n),
            )
        )
        fields.append(name.encode() + b": " + fold_text(value) + b"\r\n")
    body = draw(
        st.sampled_from([b"body\r\n", b"", b"\x00\xff\r\n.\r\n..\r\n", b"x" * 990 + b"\r\n"])
    )
    return b"".join(fields) + b"\r\n" + body
