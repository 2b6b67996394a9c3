"""Directory backends for per-recipient journaling: the shared ones in
:mod:`mailjournal.directory`, re-exported here, with the journal worker's metrics."""

from __future__ import annotations

from journal_worker import metrics
from journal_worker.directory.base import resolve
from mailjournal.config import DirectoryConfig
from mailjournal.directory import CachedDirectory, Directory, DirectoryUnavailable, Entry
from mailjournal.directory import make_directory as _make_directory
from mailjournal.directory.metrics import DirectoryMetrics

__all__ = [
    "CachedDirectory",
    "Directory",
    "DirectoryUnavailable",
    "Entry",
    "make_directory",
    "resolve",
]

METRICS = DirectoryMetrics(
    metrics.DIRECTORY_LOOKUPS, metrics.DIRECTORY_LATENCY, metrics.DIRECTORY_RELOADS
)


def make_directory(cfg: DirectoryConfig) -> Directory | None:
    return _make_directory(cfg, METRICS)
