"""Mailbox address syntax and normalisation shared by every stage.

Kept deliberately small: we accept what RFC 5321 calls a Mailbox (Local-part "@" Domain, with the
local part as dot-string or quoted-string), compare case-insensitively on the domain, and keep the
local part's case (RFC 5321 §2.4) but compare it case-insensitively too, as real directories do.
"""

from __future__ import annotations

import functools
import re

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


@functools.lru_cache(maxsize=4096)  # per recipient on the hot paths; few distinct domains
def domain_key(domain: str) -> str:
    """Comparison form of a domain: lower case, no trailing dot, internationalised labels as
    A-labels (IDNA 2008 with the UTS 46 mapping), so ``köln.example`` and
    ``xn--kln-sna.example`` are one domain (RFC 5890). A name IDNA refuses is compared as is."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain
