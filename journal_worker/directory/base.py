"""The directory seen by the journal worker: address -> attributes, with a clear outage signal.

A backend answers, for each address, the requested attributes of the matching entry (``{}`` when
the entry has none of them) or ``None`` when no entry matches. It raises
:class:`DirectoryUnavailable` when it cannot answer: the worker then retries and never decides
the message without the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from journal_worker.decide import LookupKey, lookup_key
from mailjournal.addresses import key

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

    def close(self) -> None: ...


def resolve(
    directory: Directory, requests: Iterable[tuple[str, str]]
) -> dict[LookupKey, list[str]]:
    """Answer the (attribute, address) lookups named by ``decide.needed_lookups`` in the form
    ``decide.decide`` takes. Raises :class:`DirectoryUnavailable`."""
    addresses: dict[str, str] = {}
    attributes: dict[str, str] = {}
    wanted: list[tuple[str, str]] = []
    for attribute, address in requests:
        addresses.setdefault(key(address), address)
        attributes.setdefault(attribute.casefold(), attribute)
        wanted.append((attribute, address))
    if not wanted:
        return {}
    entries = directory.lookup_many(list(addresses.values()), sorted(attributes.values()))
    answers: dict[LookupKey, list[str]] = {}
    for attribute, address in wanted:
        entry = entries.get(key(address))
        answers[lookup_key(attribute, address)] = list((entry or {}).get(attribute.casefold(), []))
    return answers
