"""File directory: address -> attributes from a TOML, JSON or CSV file, reloaded on change.

TOML / JSON: a table per address, attribute names as keys, a string or a list of strings as
values::

    ["alice@corp.example"]
    extensionAttribute10 = "supervisor-journal@corp.example"
    aliases = ["a.smith@corp.example"]

CSV: a header row; the address column is ``mail`` (or ``address``), every other column is an
attribute; multi-valued cells are separated by ``;``.

Aliases: the ``aliases`` attribute (plain addresses) and ``proxyAddresses`` (``smtp:addr``, as
in Active Directory) make the entry match those addresses too. Attribute names match
case-insensitively, like LDAP's.

Users (ingest's recipient verification): every entry's address and aliases. Sender-login
binding: an authenticated login names the entry whose address or ``login`` attribute it is; it
may send as that address, its aliases and the addresses in its ``senders`` attribute.

A file that is changed while the worker runs is reloaded (mtime, size or inode changed). A
reload that fails (half-written file, syntax error) keeps the previous contents and is counted:
dropping to an empty directory would silently skip per-recipient copies.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailjournal.addresses import canonical, key
from mailjournal.directory.base import DirectoryUnavailable, Entry, smtp_addresses
from mailjournal.directory.metrics import DirectoryMetrics

log = logging.getLogger(__name__)

ALIAS_ATTRIBUTES = ("aliases", "proxyaddresses")
LOGIN_ATTRIBUTE = "login"
SENDERS_ATTRIBUTE = "senders"


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None and str(v).strip()]
    return [str(value)] if str(value).strip() else []


def _alias_addresses(entry: Entry) -> list[str]:
    return list(entry.get("aliases", [])) + smtp_addresses(entry.get("proxyaddresses", []))


class Contents:
    """A parsed directory file: entries by address, the set of users, senders by login."""

    def __init__(self, index: dict[str, Entry], primaries: dict[str, str]):
        self.index = index
        # canonical forms (subaddress kept: the caller cuts) of every address and alias
        self.users = {canonical(a, "") for a in index}
        self.users.update(canonical(a, "") for e in index.values() for a in _alias_addresses(e))
        # login (case-folded) -> the addresses it may send as
        self.senders: dict[str, list[str]] = {}
        for k, address in primaries.items():
            entry = index[k]
            allowed = [address, *_alias_addresses(entry), *entry.get(SENDERS_ATTRIBUTE, [])]
            for login in [address, *entry.get(LOGIN_ATTRIBUTE, [])]:
                self.senders.setdefault(login.casefold(), allowed)


def parse_directory(path: Path, data: bytes) -> dict[str, Entry]:
    """Index key(address) -> entry; raises ValueError on malformed content."""
    return parse_contents(path, data).index


def parse_contents(path: Path, data: bytes) -> Contents:
    """Raises ValueError on malformed content."""
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix in (".toml", ".json"):
        try:
            doc = tomllib.loads(data.decode()) if suffix == ".toml" else json.loads(data)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: top level must map addresses to attribute tables")
        for address, attrs in doc.items():
            if not isinstance(attrs, dict):
                raise ValueError(f"{path}: entry {address!r} is not a table of attributes")
            rows.append((address, attrs))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        fields = {f.casefold(): f for f in reader.fieldnames or []}
        col = fields.get("mail") or fields.get("address")
        if col is None:
            raise ValueError(f"{path}: CSV needs a 'mail' or 'address' column")
        for row in reader:
            attrs = {
                name: [v.strip() for v in (value or "").split(";") if v.strip()]
                for name, value in row.items()
                if name is not None and name != col
            }
            rows.append(((row.get(col) or "").strip(), attrs))
    else:
        raise ValueError(f"{path}: unknown directory file type (use .toml, .json or .csv)")

    index: dict[str, Entry] = {}
    primaries: dict[str, str] = {}
    for address, attrs in rows:
        if not address:
            continue
        entry: Entry = {}
        for name, value in attrs.items():
            entry.setdefault(str(name).casefold(), []).extend(_values(value))
        index[key(address)] = entry
        primaries[key(address)] = address
    # aliases after primaries, so an alias never shadows another entry's primary address
    for address, entry in list(index.items()):
        for alias in _alias_addresses(entry):
            if key(alias) != address:
                index.setdefault(key(alias), entry)
    return Contents(index, primaries)


class FileDirectory:
    backend = "file"

    def __init__(
        self, path: Path, check_interval: float = 1.0, metrics: DirectoryMetrics | None = None
    ):
        self.path = Path(path)
        self.check_interval = check_interval
        self._metrics = metrics
        self._lock = threading.Lock()
        self._index: Contents | None = None
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")

    def _reloaded(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.reloads.labels(result).inc()

    def _refresh(self) -> Contents:
        now = time.monotonic()
        if self._index is not None and now - self._checked_at < self.check_interval:
            return self._index
        self._checked_at = now
        signature: tuple[int, int, int] | None = None
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature != self._signature or self._index is None:
                contents = parse_contents(self.path, self.path.read_bytes())
                self._index, self._signature = contents, signature
                self._reloaded("ok")
                log.info("directory file %s loaded: %d addresses", self.path, len(contents.index))
        except (OSError, ValueError) as exc:
            if self._index is None:
                self._reloaded("error")
                raise DirectoryUnavailable(f"directory file {self.path}: {exc}") from None
            if signature is None or signature != self._signature:
                # keep serving the last good contents; try again when the file changes
                self._reloaded("error")
                log.error(
                    "directory file %s not reloaded, keeping previous contents: %s", self.path, exc
                )
                self._signature = signature
        return self._index

    def lookup_many(
        self, addresses: Sequence[str], attributes: Sequence[str]
    ) -> dict[str, Entry | None]:
        started = time.perf_counter()
        with self._lock:
            index = self._refresh().index
        wanted = [a.casefold() for a in attributes]
        out: dict[str, Entry | None] = {}
        found = 0
        for address in addresses:
            entry = index.get(key(address))
            if entry is not None:
                found += 1
                out[key(address)] = {a: list(entry.get(a, [])) for a in wanted if a in entry}
            else:
                out[key(address)] = None
        self._count(started, found, len(out) - found)
        return out

    def _count(self, started: float, found: int, not_found: int) -> None:
        if self._metrics is None:
            return
        self._metrics.latency.labels(self.backend).observe(time.perf_counter() - started)
        if found:
            self._metrics.lookups.labels(self.backend, "found").inc(found)
        if not_found:
            self._metrics.lookups.labels(self.backend, "not_found").inc(not_found)

    def exists(self, address: str) -> bool:
        started = time.perf_counter()
        with self._lock:
            users = self._refresh().users
        found = address in users
        self._count(started, int(found), int(not found))
        return found

    def sender_addresses(self, login: str) -> list[str] | None:
        started = time.perf_counter()
        with self._lock:
            allowed = self._refresh().senders.get(login.casefold())
        self._count(started, int(allowed is not None), int(allowed is None))
        return None if allowed is None else list(allowed)

    def close(self) -> None:
        pass
