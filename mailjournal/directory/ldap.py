"""LDAP directory (ldap3): one search per address, over a small pool of bound connections.

The filter comes from the configuration with ``{address}`` replaced by the address escaped per
RFC 4515, so an address like ``a*)(uid=*`` cannot widen the search. The default filter matches
the primary ``mail`` and Active Directory style ``proxyAddresses`` aliases (``smtp:alias``).

Anything that keeps the server from answering (refused connection, timeout, dropped session,
bind failure, an error result) raises :class:`DirectoryUnavailable`; the worker retries and does
not decide the message meanwhile. A pooled connection that fails is discarded and the search is
tried once more on a fresh connection, so a restarted server is picked up at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from ldap3 import NONE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from mailjournal.addresses import key
from mailjournal.config import LdapDirectoryConfig
from mailjournal.directory.base import DirectoryUnavailable, Entry, smtp_addresses
from mailjournal.directory.metrics import DirectoryMetrics

log = logging.getLogger(__name__)


def build_filter(template: str, address: str, placeholder: str = "{address}") -> str:
    return template.replace(placeholder, escape_filter_chars(address))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class LdapDirectory:
    backend = "ldap"

    def __init__(self, cfg: LdapDirectoryConfig, metrics: DirectoryMetrics | None = None):
        self.cfg = cfg
        self._metrics = metrics
        url = urlparse(cfg.url)
        if url.scheme not in ("ldap", "ldaps"):
            raise ValueError(
                f"directory.ldap.url: scheme must be ldap or ldaps, not {url.scheme!r}"
            )
        tls = None
        if url.scheme == "ldaps" or cfg.start_tls:
            tls = Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(cfg.ca_file) if cfg.ca_file else None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (636 if url.scheme == "ldaps" else 389)
        self._use_ssl = url.scheme == "ldaps"
        self._tls = tls
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(cfg.pool_size)
        self._executor = ThreadPoolExecutor(cfg.pool_size, thread_name_prefix="ldap")

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> Connection:
        # a fresh Server per connection: ldap3 marks a Server's address unusable after a failed
        # connect and would refuse it even once the directory is back
        server = Server(
            self._host,
            port=self._port,
            use_ssl=self._use_ssl,
            tls=self._tls,
            get_info=NONE,  # no schema/DSE read at connect: one round trip less, fewer rights
            connect_timeout=self.cfg.timeout_seconds,
        )
        conn = Connection(
            server,
            user=self.cfg.bind_dn,
            password=self.cfg.password(),
            client_strategy=SYNC,
            read_only=True,
            receive_timeout=math.ceil(self.cfg.timeout_seconds),  # ldap3 packs it as an int
            raise_exceptions=False,
            auto_referrals=False,
        )
        conn.open(read_server_info=False)  # raises when the server cannot be reached
        if conn.closed:
            raise LDAPException(f"cannot connect to {self.cfg.url}")
        if self.cfg.start_tls and not self._use_ssl and not conn.start_tls():
            conn.unbind()
            raise LDAPException(f"StartTLS failed: {conn.result}")
        if not conn.bind():
            desc = (conn.result or {}).get("description")
            conn.unbind()
            raise LDAPException(f"bind as {self.cfg.bind_dn or 'anonymous'} failed: {desc}")
        return conn

    def _discard(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):  # already broken: nothing to tell the server
            conn.unbind()

    # -- searching ----------------------------------------------------------------------------

    def _search(
        self, conn: Connection, search_filter: str, attributes: Sequence[str]
    ) -> Entry | None:
        conn.search(
            self.cfg.base_dn,
            search_filter,
            search_scope=SUBTREE,
            attributes=list(attributes),
            time_limit=max(1, int(self.cfg.timeout_seconds)),
        )
        result = conn.result or {}
        # "no entries" must be a clean success (code 0); anything else is not an answer
        if result.get("result") != 0:
            raise LDAPException(
                f"search failed: {result.get('description')} {result.get('message')}"
            )
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if not entries:
            return None
        if len(entries) > 1:
            # an address on two entries is a directory error; journaling for both is the safe
            # side (a copy too many is visible, one too few is not)
            log.warning(
                "directory: %d entries match one address; merging their attributes", len(entries)
            )
        wanted = {a.casefold() for a in attributes}
        merged: Entry = {}
        for entry in entries:
            for name, value in (entry.get("attributes") or {}).items():
                if name.casefold() not in wanted:
                    continue
                values = value if isinstance(value, list) else [value]
                if not values:
                    continue  # ldap3 lists requested attributes the entry lacks as []
                bucket = merged.setdefault(name.casefold(), [])
                bucket.extend(v for v in (_text(x) for x in values) if v not in bucket)
        return merged

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.lookups.labels(self.backend, result).inc()

    def lookup(self, address: str, attributes: Sequence[str]) -> Entry | None:
        return self.search(build_filter(self.cfg.filter, address), attributes)

    def exists(self, address: str) -> bool:
        return self.search(build_filter(self.cfg.filter, address), ["mail"]) is not None

    def sender_addresses(self, login: str) -> list[str] | None:
        """The user's addresses: the values of ``sender_attributes`` (``smtp:`` values of
        ``proxyAddresses`` style attributes unwrapped, other schemes ignored)."""
        search_filter = build_filter(self.cfg.login_filter, login, "{login}")
        entry = self.search(search_filter, self.cfg.sender_attributes)
        if entry is None:
            return None
        out: list[str] = []
        for values in entry.values():
            for value in values:
                scheme, sep, _ = value.partition(":")
                if sep and "@" not in scheme:
                    out.extend(smtp_addresses([value]))
                else:
                    out.append(value)
        return out

    def search(self, search_filter: str, attributes: Sequence[str]) -> Entry | None:
        started = time.perf_counter()
        try:
            with self._slots:
                try:
                    conn = self._idle.get_nowait()
                    reused = True
                except queue.Empty:
                    conn, reused = None, False
                attempts = 2 if reused else 1
                for attempt in range(attempts):
                    try:
                        if conn is None:
                            conn = self._connect()
                        entry = self._search(conn, search_filter, attributes)
                    except Exception as exc:  # any failure to get an answer is an outage
                        if conn is not None:
                            self._discard(conn)
                            conn = None
                        if attempt + 1 < attempts:
                            continue  # a stale pooled connection: try a fresh one once
                        raise DirectoryUnavailable(f"LDAP {self.cfg.url}: {exc}") from None
                    self._idle.put(conn)
                    break
        except DirectoryUnavailable:
            self._count("error")
            raise
        finally:
            if self._metrics is not None:
                elapsed = time.perf_counter() - started
                self._metrics.latency.labels(self.backend).observe(elapsed)
        self._count("found" if entry is not None else "not_found")
        return entry

    def lookup_many(
        self, addresses: Sequence[str], attributes: Sequence[str]
    ) -> dict[str, Entry | None]:
        unique = list({key(a): a for a in addresses}.items())
        if len(unique) == 1:
            k, address = unique[0]
            return {k: self.lookup(address, attributes)}
        futures = [(k, self._executor.submit(self.lookup, a, attributes)) for k, a in unique]
        out: dict[str, Entry | None] = {}
        error: DirectoryUnavailable | None = None
        for k, fut in futures:
            try:
                out[k] = fut.result()
            except DirectoryUnavailable as exc:
                error = error or exc
        if error is not None:
            raise error
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                break
