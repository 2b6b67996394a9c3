"""A bounded LRU cache in front of a directory: TTL for entries, a shorter TTL for "no entry".

Errors are never cached: an outage must end as soon as the backend answers again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from mailjournal.addresses import canonical, key
from mailjournal.directory.base import Directory, Entry
from mailjournal.directory.metrics import DirectoryMetrics


class CachedDirectory:
    def __init__(
        self,
        inner: Directory,
        ttl_seconds: float,
        negative_ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        metrics: DirectoryMetrics | None = None,
    ):
        self.inner = inner
        self.backend = inner.backend
        self.ttl = ttl_seconds
        self.negative_ttl = negative_ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()
        # (kind, key...) -> (expires at, answer)
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def _hits(self, n: int) -> None:
        if n and self._metrics is not None:
            self._metrics.lookups.labels(self.backend, "cache_hit").inc(n)

    def _get(self, k: Hashable, now: float) -> tuple[bool, Any]:
        """(found, answer); the caller holds the lock."""
        item = self._data.get(k)
        if item is not None and item[0] > now:
            self._data.move_to_end(k)
            return True, item[1]
        if item is not None:
            del self._data[k]
        return False, None

    def _put(self, k: Hashable, answer: Any, positive: bool, now: float) -> None:
        """The caller holds the lock."""
        ttl = self.ttl if positive else self.negative_ttl
        if ttl <= 0 or self.max_entries <= 0:
            return
        self._data[k] = (now + ttl, answer)
        self._data.move_to_end(k)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def _cached(
        self, k: Hashable, fetch: Callable[[], Any], positive: Callable[[Any], bool]
    ) -> Any:
        with self._lock:
            found, answer = self._get(k, self._clock())
        if found:
            self._hits(1)
            return answer
        answer = fetch()  # DirectoryUnavailable propagates, uncached
        with self._lock:
            self._put(k, answer, positive(answer), self._clock())
        return answer

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
                found, entry = self._get(("entry", k, attrs), now)
                if found:
                    out[k] = entry
                else:
                    missing.append(address)
        self._hits(len(addresses) - len(missing))
        if not missing:
            return out
        fetched = self.inner.lookup_many(missing, attributes)  # DirectoryUnavailable propagates
        now = self._clock()
        with self._lock:
            for k, entry in fetched.items():
                out[k] = entry
                self._put(("entry", k, attrs), entry, entry is not None, now)
        return out

    def exists(self, address: str) -> bool:
        answer: bool = self._cached(
            ("exists", canonical(address)), lambda: self.inner.exists(address), bool
        )
        return answer

    def sender_addresses(self, login: str) -> list[str] | None:
        answer: list[str] | None = self._cached(
            ("senders", login.casefold()),
            lambda: self.inner.sender_addresses(login),
            lambda a: a is not None,
        )
        return None if answer is None else list(answer)

    def close(self) -> None:
        self.inner.close()
