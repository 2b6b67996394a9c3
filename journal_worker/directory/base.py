"""The directory as the journal worker uses it: the shared backends plus :func:`resolve`,
which answers the decision functions' lookups."""

from __future__ import annotations

from collections.abc import Iterable

from journal_worker.decide import LookupKey, lookup_key
from mailjournal.addresses import key
from mailjournal.directory.base import Directory, DirectoryUnavailable, Entry

__all__ = ["Directory", "DirectoryUnavailable", "Entry", "resolve"]


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
