"""A bounded LRU cache in front of a directory: TTL for entries, a shorter TTL for "no entry".

Errors are never cached: an outage must end as soon as the backend answers again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from journal_worker import metrics
from journal_worker.directory.base import Directory, Entry
from mailjournal.addresses import key


class CachedDirectory:
    def __init__(
        self,
        inner: Directory,
        ttl_seconds: float,
        negative_ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.inner = inner
        self.backend = inner.backend
        self.ttl = ttl_seconds
        self.negative_ttl = negative_ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # (address key, attributes) -> (expires at, entry or None)
        self._data: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, Entry | None]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def lookup_many(
        self, addresses: Sequence[str], attributes: Sequence[str]
    ) -> dict[str, Entry | None]:
        attrs = tuple(sorted(a.casefold() for a in attributes))
        now = self._clock()
        out: dict[str, Entry | None] = {}
        missing: list[str] = []
        with self._lock:
            for address in addresses:
                k = key(address)
                item = self._data.get((k, attrs))
                if item is not None and item[0] > now:
                    self._data.move_to_end((k, attrs))
                    out[k] = item[1]
                else:
                    if item is not None:
                        del self._data[(k, attrs)]
                    missing.append(address)
        hits = len(addresses) - len(missing)
        if hits:
            metrics.DIRECTORY_LOOKUPS.labels(self.backend, "cache_hit").inc(hits)
        if not missing:
            return out
        fetched = self.inner.lookup_many(missing, attributes)  # DirectoryUnavailable propagates
        now = self._clock()
        with self._lock:
            for k, entry in fetched.items():
                out[k] = entry
                ttl = self.ttl if entry is not None else self.negative_ttl
                if ttl <= 0 or self.max_entries <= 0:
                    continue
                self._data[(k, attrs)] = (now + ttl, entry)
                self._data.move_to_end((k, attrs))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return out

    def close(self) -> None:
        self.inner.close()
