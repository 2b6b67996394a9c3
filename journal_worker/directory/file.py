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

from journal_worker import metrics
from journal_worker.directory.base import DirectoryUnavailable, Entry
from mailjournal.addresses import key

log = logging.getLogger(__name__)

ALIAS_ATTRIBUTES = ("aliases", "proxyaddresses")


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None and str(v).strip()]
    return [str(value)] if str(value).strip() else []


def _alias_addresses(entry: Entry) -> list[str]:
    out = list(entry.get("aliases", []))
    for value in entry.get("proxyaddresses", []):
        scheme, sep, address = value.partition(":")
        if sep and scheme.lower() == "smtp":
            out.append(address)
    return out


def parse_directory(path: Path, data: bytes) -> dict[str, Entry]:
    """Index key(address) -> entry; raises ValueError on malformed content."""
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
    for address, attrs in rows:
        if not address:
            continue
        entry: Entry = {}
        for name, value in attrs.items():
            entry.setdefault(str(name).casefold(), []).extend(_values(value))
        index[key(address)] = entry
    # aliases after primaries, so an alias never shadows another entry's primary address
    for address, entry in list(index.items()):
        for alias in _alias_addresses(entry):
            if key(alias) != address:
                index.setdefault(key(alias), entry)
    return index


class FileDirectory:
    backend = "file"

    def __init__(self, path: Path, check_interval: float = 1.0):
        self.path = Path(path)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._index: dict[str, Entry] | None = None
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")

    def _refresh(self) -> dict[str, Entry]:
        now = time.monotonic()
        if self._index is not None and now - self._checked_at < self.check_interval:
            return self._index
        self._checked_at = now
        signature: tuple[int, int, int] | None = None
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature != self._signature or self._index is None:
                index = parse_directory(self.path, self.path.read_bytes())
                self._index, self._signature = index, signature
                metrics.DIRECTORY_RELOADS.labels("ok").inc()
                log.info("directory file %s loaded: %d addresses", self.path, len(index))
        except (OSError, ValueError) as exc:
            if self._index is None:
                metrics.DIRECTORY_RELOADS.labels("error").inc()
                raise DirectoryUnavailable(f"directory file {self.path}: {exc}") from None
            if signature is None or signature != self._signature:
                # keep serving the last good contents; try again when the file changes
                metrics.DIRECTORY_RELOADS.labels("error").inc()
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
            index = self._refresh()
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
        metrics.DIRECTORY_LATENCY.labels(self.backend).observe(time.perf_counter() - started)
        if found:
            metrics.DIRECTORY_LOOKUPS.labels(self.backend, "found").inc(found)
        if len(out) - found:
            metrics.DIRECTORY_LOOKUPS.labels(self.backend, "not_found").inc(len(out) - found)
        return out

    def close(self) -> None:
        pass
