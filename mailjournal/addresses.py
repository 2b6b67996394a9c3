"""Mailbox address syntax and normalisation shared by every stage.

Kept deliberately small: we accept what RFC 5321 calls a Mailbox (Local-part "@" Domain, with the
local part as dot-string or quoted-string), compare case-insensitively on the domain, and keep the
local part's case (RFC 5321 §2.4) but compare it case-insensitively too, as real directories do.

:func:`canonical` is the one comparison form of an address where it matters that no other
spelling gets through: journal and NDR addresses, recipient verification, sender-login binding.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import idna

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LDH = r"A-Za-z0-9\u0080-\U0010ffff"
_LABEL = rf"(?:[{_LDH}](?:[{_LDH}\-]{{0,61}}[{_LDH}])?)"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDR_LITERAL = r"\[[^\[\]\\\s]+\]"
_MAILBOX_RE = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_ADDR_LITERAL})")


class AddressError(ValueError):
    """An address that is not a valid RFC 5321 mailbox."""


def is_valid_mailbox(address: str) -> bool:
    return len(address) <= 254 and bool(_MAILBOX_RE.fullmatch(address))  # not "$": no final LF


def validate_mailbox(address: str) -> str:
    """Return the address with its domain lower-cased, or raise AddressError."""
    address = address.strip()
    if not is_valid_mailbox(address):
        raise AddressError(f"not a valid mail address: {address!r}")
    return normalize(address)


def normalize(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def key(address: str) -> str:
    """Comparison key: the whole address case-folded (how directories match mail addresses)."""
    return address.casefold()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def domain_key(domain: str) -> str:
    """Comparison form of a domain: lower case, no trailing dot, internationalised labels as
    A-labels (IDNA 2008 with the UTS 46 mapping), so ``köln.example`` and
    ``xn--kln-sna.example`` are one domain (RFC 5890). A name IDNA refuses is compared as is."""
    canon = canonical_domain(domain)
    return canon if canon is not None else domain.strip().rstrip(".").lower()


# -- the canonical form ------------------------------------------------------------------------

# RFC 3490 3.1 / UTS 46: these full stops separate labels like "." does
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_DOT_ATOM_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# canonical() of what is not a mailbox: cannot equal the canonical form of any mailbox
INVALID_PREFIX = "\x00invalid:"


def _fold(text: str) -> str:
    """Compatibility caseless form (Unicode 3.13 D146): width and case variants are one."""
    for _ in range(4):  # reaches its fixpoint in one or two rounds
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        if folded == text:
            break
        text = folded
    return text


@functools.lru_cache(maxsize=4096)  # per recipient on the hot paths; few distinct domains
def canonical_domain(domain: str) -> str | None:
    """A domain as one string per name: full stops mapped, no trailing dot, IDNA 2008 A-labels
    after the UTS 46 mapping (width, case), lower case; an address literal lower-cased. None
    when the name is not a valid domain."""
    domain = domain.strip().translate(_DOTS)
    if domain.startswith("[") and domain.endswith("]"):
        return domain.lower()
    domain = domain.removesuffix(".")
    if not domain:
        return None
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def _unquote(local: str) -> str | None:
    """The content of a quoted-string local part, backslash escapes resolved; None when the
    quoting is broken."""
    out: list[str] = []
    i, end = 1, len(local) - 1
    while i < end:
        c = local[i]
        if c == "\\":
            if i + 1 >= end:
                return None
            i += 1
            c = local[i]
        elif c == '"':
            return None
        out.append(c)
        i += 1
    return "".join(out)


def _cut_subaddress(local: str, delimiters: str) -> str:
    """``user+ext`` -> ``user`` at the first delimiter (Postfix's recipient_delimiter: each
    character is one); a part that starts with it is kept (``+list`` is a name of its own)."""
    for i, c in enumerate(local):
        if c in delimiters and i > 0:
            return local[:i]
    return local


@functools.lru_cache(maxsize=16384)  # per recipient on the hot paths
def canonical(address: str, delimiter: str = "+") -> str:
    """The one form in which two spellings of an address compare equal, for journal/NDR
    address protection and directory membership.

    Local part: a quoted-string is unquoted (escapes resolved) and kept unquoted when that is a
    dot-atom, else quoted again minimally; the subaddress is cut at ``delimiter`` (empty: off);
    NFKC and case folded (journal mailboxes are case-insensitive on every server we know).
    Domain: :func:`canonical_domain`. Never raises: a string that is not a mailbox maps to a
    form starting with :data:`INVALID_PREFIX`, which equals the canonical form of no mailbox."""
    if address.startswith(INVALID_PREFIX):
        return address
    local, at, domain = address.strip().rpartition("@")
    canon_domain = canonical_domain(domain) if at else None
    if not local or canon_domain is None:
        return INVALID_PREFIX + address
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        content = _unquote(local)
        if content is None:
            return INVALID_PREFIX + address
    else:
        content = local
    if delimiter:
        content = _cut_subaddress(content, delimiter)
    content = _fold(content)
    if not _DOT_ATOM_RE.fullmatch(content):
        content = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{content}@{canon_domain}"


def has_routing_local_part(address: str) -> bool:
    """Does the local part carry sender-specified routing: ``user%host``, ``host!user`` or a
    quoted ``"user@host"``? A next hop's percent hack or bang path handling would relay it."""
    local = address.rpartition("@")[0]
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = _unquote(local) or local
    return any(c in local for c in "%!@")
