"""The directory as the journal worker uses it: a backend of :mod:`mailjournal.directory` that
counts into the worker's metrics, and :func:`resolve`, which answers the decision functions'
lookups."""

from __future__ import annotations

from collections.abc import Iterable

from journal_worker import metrics
from journal_worker.decide import LookupKey, lookup_key
from mailjournal.addresses import key
from mailjournal.config import DirectoryConfig
from mailjournal.directory import Directory
from mailjournal.directory import make_directory as _make_directory
from mailjournal.directory.metrics import DirectoryMetrics

METRICS = DirectoryMetrics(
    metrics.DIRECTORY_LOOKUPS, metrics.DIRECTORY_LATENCY, metrics.DIRECTORY_RELOADS
)


def make_directory(cfg: DirectoryConfig) -> Directory | None:
    return _make_directory(cfg, METRICS)


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
