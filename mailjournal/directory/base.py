"""The directory: address -> attributes, address -> "is a user", login -> sender addresses,
with a clear outage signal. Shared by the journal worker (per-recipient journaling) and ingest
(recipient verification, sender-login binding).

A backend answers, for each address, the requested attributes of the matching entry (``{}`` when
the entry has none of them) or ``None`` when no entry matches. It raises
:class:`DirectoryUnavailable` when it cannot answer: the journal worker then retries and never
decides the message without the answer; ingest answers ``451 4.4.3``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

# attribute name case-folded -> values
Entry = dict[str, list[str]]


class DirectoryUnavailable(Exception):
    """The directory could not answer (down, timeout, unreadable file): retry, do not skip."""


class Directory(Protocol):
    backend: str  # metric label: "file", "ldap"

    def lookup_many(
        self, addresses: Sequence[str], attributes: Sequence[str]
    ) -> dict[str, Entry | None]:
        """Entries keyed by :func:`mailjournal.addresses.key` of each address."""
        ...

    def exists(self, address: str) -> bool:
        """Is ``address`` (compared in :func:`mailjournal.addresses.canonical` form, the
        subaddress cut) a user's primary address or alias?"""
        ...

    def sender_addresses(self, login: str) -> list[str] | None:
        """The addresses the authenticated ``login`` may use as MAIL FROM; None when the
        directory has no such user."""
        ...

    def close(self) -> None: ...


def smtp_addresses(values: Iterable[str]) -> list[str]:
    """The SMTP addresses of Active Directory style ``proxyAddresses`` (``smtp:a``,
    ``SMTP:a``); other schemes (``x500:``, ``sip:``) are not mail addresses."""
    out = []
    for value in values:
        scheme, sep, address = value.partition(":")
        if sep and scheme.lower() == "smtp" and address:
            out.append(address)
    return out
