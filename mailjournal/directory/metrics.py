"""The counters a directory backend updates, handed in by the stage that owns the backend, so
the journal worker and ingest each expose their own series."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram


@dataclass(frozen=True, slots=True)
class DirectoryMetrics:
    lookups: Counter  # labels: backend, result (cache_hit, found, not_found, error)
    latency: Histogram  # labels: backend
    reloads: Counter  # labels: result (ok, error)
