"""Avro codec for the mailjournal events (fastavro), in Avro single-object encoding.

Wire format (Avro spec, "Single-object encoding")::

    C3 01 | CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form (8 bytes, LE) | body

Every released schema version is kept as ``avro/<Name>/v<N>.avsc``. Writers always use the newest
version of a schema; readers look the fingerprint up among *all* kept versions and resolve the
writer's schema to the newest one (Avro schema resolution), so a consumer can read records written
by an older producer, or by a newer one whose version file this build already carries.

Rolling out a new version N+1 (compatible both ways: new fields have defaults, enums have
defaults): first deploy the file everywhere with writers pinned to N (``write_versions`` or
``MAILJOURNAL_SCHEMA_WRITE_VERSIONS=Name=N``), then unpin. A reader that lacks a writer's version
cannot look its fingerprint up and raises SchemaError. Never delete a version file while records
written with it may still be read (retention of the topics, the retry topic included).

Anything that cannot be decoded faithfully -- wrong magic, unknown fingerprint, truncated or
corrupt body, trailing bytes -- raises :class:`SchemaError` (a ``ValueError``) with a message that
says which, so a stage can dead-letter the record instead of crashing or mis-reading it.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
from fastavro.schema import fingerprint as _fingerprint_hex
from fastavro.schema import to_parsing_canonical_form

from schemas import _avro
from schemas.native import Node, Unsupported, compile_schema

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "SPLICE_MIN_BYTES",
    "WRITE_VERSIONS_ENV",
    "Codec",
    "SchemaError",
    "SchemaVersion",
    "decode",
    "decode_with_name",
    "default_codec",
    "encode",
    "fingerprint64",
    "latest",
    "names",
    "peek",
    "schema_versions",
    "write_body",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

_VERSION_FILE = re.compile(r"v([0-9]+)\.avsc")


class SchemaError(ValueError):
    """A record or schema that cannot be encoded or decoded faithfully."""


class SchemaVersion(NamedTuple):
    version: int
    schema: dict[str, Any]  # parsed by fastavro.parse_schema


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One kept version of one schema, parsed once."""

    name: str
    version: int
    schema: dict[str, Any]  # fastavro-parsed, used for reading/writing
    source: dict[str, Any]  # JSON as in the file (docs, defaults, logical types included)
    canonical: str  # Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of ``canonical``, 8 bytes little-endian
    header: bytes  # MAGIC + fingerprint
    tail_bytes: str | None  # name of a last top-level field of type "bytes" (see write_body)
    head_schema: dict[str, Any] | None  # the record without its tail field (see decode)
    program: Node | None  # for the native codec (schemas.native), None where fastavro must do


def fingerprint64(schema: dict[str, Any] | list[Any] | str) -> bytes:
    """CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, little-endian as on the wire.

    ``schema`` is a schema as JSON-decoded (a dict, or a primitive type name such as ``"long"``).
    """
    return _crc64_avro(to_parsing_canonical_form(schema))


def _crc64_avro(canonical: str) -> bytes:
    # fastavro returns the hex of the little-endian bytes, i.e. the single-object header order.
    return bytes.fromhex(_fingerprint_hex(canonical, "CRC-64-AVRO"))


# Payloads at least this large are spliced in rather than written through fastavro, whose writer
# grows an internal bytearray and copies it again into the output: about 6x faster at 1 MB.
SPLICE_MIN_BYTES = 64 * 1024


def write_body(
    entry: SchemaEntry, prefix: bytes, record: Mapping[str, Any], *, strict: bool = True
) -> bytes:
    """``prefix`` + Avro binary encoding of ``record`` with ``entry``'s schema.

    ``strict``: a misspelt or missing field is an error, not a silent default or a dropped
    value; only fields with a schema default may be omitted. Strict records of a schema the
    native codec compiles are written by it (:mod:`schemas.native`), the rest by fastavro.
    """
    if strict and entry.program is not None:
        try:
            return _avro.encode(
                entry.program, record if isinstance(record, dict) else dict(record), prefix
            )
        except Exception as exc:  # as for fastavro below: the caller gets a SchemaError
            raise SchemaError(f"cannot encode {entry.name} v{entry.version}: {exc}") from exc
    payload: bytes | bytearray | memoryview | None = None
    tail = entry.tail_bytes
    if tail is not None:
        value = record.get(tail)
        # a memoryview (a decoded tail, see Codec.decode) always: fastavro writes bytes only
        if isinstance(value, memoryview) or (
            isinstance(value, bytes | bytearray) and len(value) >= SPLICE_MIN_BYTES
        ):
            # Avro writes a record as its fields in order, and bytes as zigzag-varint length +
            # data. With the trailing bytes field empty, its encoding is the single last byte
            # 0x00; swap that for the real length and payload: the payload is copied once.
            payload = value
            record = {**record, tail: b""}
    out = io.BytesIO()
    out.write(prefix)
    try:
        fastavro.schemaless_writer(out, entry.schema, record, strict_allow_default=strict)
    except Exception as exc:
        raise SchemaError(f"cannot encode {entry.name} v{entry.version}: {exc}") from exc
    head = out.getvalue()  # BytesIO hands over its buffer without another copy
    if payload is None:
        return head
    assert head[-1] == 0, "empty trailing bytes field must encode as 0x00"
    return b"".join((head[:-1], _long_varint(len(payload)), payload))


def _long_varint(n: int) -> bytes:
    """Avro encoding of a non-negative long: zigzag (n << 1), then base-128 varint."""
    n <<= 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# the length of a tail ``bytes`` field, read by fastavro (see Codec.decode_with_name)
_LONG = fastavro.parse_schema("long")


def _default_root() -> Traversable:
    return resources.files(__package__ or "schemas") / "avro"


class Codec:
    """Encoder/decoder over one directory of versioned schemas (``<root>/<Name>/v<N>.avsc``).

    Thread-safe after construction: all state is built once and only read afterwards.
    """

    def __init__(
        self,
        root: Traversable | Path | str | None = None,
        write_versions: Mapping[str, int] | None = None,
    ) -> None:
        """``root``: schema directory (default: the packaged ``schemas/avro``).

        ``write_versions``: pin the version :meth:`encode` writes per schema name (default: the
        newest), for rolling upgrades: ship a new version to every reader first, then unpin.
        """
        if root is None:
            root = _default_root()
        elif isinstance(root, str):
            root = Path(root)
        self._versions: dict[str, list[SchemaEntry]] = {}
        self._latest: dict[str, SchemaEntry] = {}
        self._by_fingerprint: dict[bytes, SchemaEntry] = {}
        self._load(root)
        self._writers: dict[str, SchemaEntry] = dict(self._latest)
        for name, version in (write_versions or {}).items():
            self._writers[name] = self.entry(name, version)

    # -- loading -----------------------------------------------------------------------------

    def _load(self, root: Traversable | Path) -> None:
        if not root.is_dir():
            raise SchemaError(f"schema directory not found: {root}")
        for directory in sorted(root.iterdir(), key=lambda p: p.name):
            if not directory.is_dir() or directory.name.startswith(("_", ".")):
                continue
            entries = [
                self._load_file(directory.name, f)
                for f in directory.iterdir()
                if f.name.endswith(".avsc")
            ]
            if not entries:
                continue
            entries.sort(key=lambda e: e.version)
            self._versions[directory.name] = entries
            self._latest[directory.name] = entries[-1]
            for entry in entries:  # ascending: a newer version with an equal form wins
                other = self._by_fingerprint.get(entry.fingerprint)
                if other is not None and other.name != entry.name:
                    raise SchemaError(
                        f"{entry.name} v{entry.version} and {other.name} v{other.version} have "
                        f"the same fingerprint {entry.fingerprint.hex()}"
                    )
                # Same name, same canonical form (e.g. only docs changed): either one decodes
                # the bytes identically, so keeping the newer one is harmless.
                self._by_fingerprint[entry.fingerprint] = entry
        if not self._versions:
            raise SchemaError(f"no schemas (<Name>/v<N>.avsc) under {root}")

    @staticmethod
    def _load_file(name: str, path: Traversable | Path) -> SchemaEntry:
        match = _VERSION_FILE.fullmatch(path.name)
        if match is None:
            raise SchemaError(f"{name}/{path.name}: schema files must be named v<N>.avsc")
        version = int(match.group(1))
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
            # A fresh named-type table per file: versions of one schema define the same names
            # differently, and each file must be self-contained.
            parsed = fastavro.parse_schema(source, named_schemas={})
        except Exception as exc:
            raise SchemaError(f"{name}/{path.name}: invalid Avro schema: {exc}") from exc
        if not isinstance(source, dict) or source.get("type") != "record":
            raise SchemaError(f"{name}/{path.name}: top-level schema must be a record")
        assert isinstance(parsed, dict)  # a record schema parses to a dict
        short_name = str(parsed["name"]).rsplit(".", 1)[-1]
        if short_name != name:
            raise SchemaError(f"{name}/{path.name}: record is named {parsed['name']!r}")
        canonical = to_parsing_canonical_form(source)
        fp = _crc64_avro(canonical)
        last = source["fields"][-1] if source.get("fields") else {}
        tail = last["name"] if last.get("type") == "bytes" else None
        head: dict[str, Any] | None = None
        if tail is not None:
            parsed_head = fastavro.parse_schema(
                {**source, "fields": source["fields"][:-1]}, named_schemas={}
            )
            assert isinstance(parsed_head, dict)
            head = parsed_head
        try:
            program: Node | None = compile_schema(source)
        except Unsupported:
            program = None
        return SchemaEntry(
            name, version, parsed, source, canonical, fp, MAGIC + fp, tail, head, program
        )

    # -- schema lookup -----------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._versions)

    def entry(self, name: str, version: int | None = None) -> SchemaEntry:
        """The kept version ``version`` of ``name`` (default: the newest)."""
        try:
            if version is None:
                return self._latest[name]
            for entry in self._versions[name]:
                if entry.version == version:
                    return entry
        except KeyError:
            raise SchemaError(
                f"unknown schema {name!r}; known: {', '.join(self.names())}"
            ) from None
        raise SchemaError(f"schema {name} has no kept version {version}")

    def entries(self, name: str) -> list[SchemaEntry]:
        self.entry(name)  # raises for an unknown name
        return list(self._versions[name])

    def schema_versions(self, name: str) -> list[SchemaVersion]:
        """Every kept version of ``name``, oldest first, as (version, parsed schema)."""
        return [SchemaVersion(e.version, e.schema) for e in self.entries(name)]

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of ``name`` (the one :meth:`encode` writes)."""
        entry = self.entry(name)
        return SchemaVersion(entry.version, entry.schema)

    # -- encoding ----------------------------------------------------------------------------

    def writer_entry(self, name: str) -> SchemaEntry:
        """The version :meth:`encode` writes for ``name`` (the newest unless pinned)."""
        self.entry(name)  # raises for an unknown name
        return self._writers[name]

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Single-object encoding of ``record`` with the newest (or pinned) version of ``name``."""
        entry = self._writers.get(name)
        if entry is None:
            self.entry(name)  # raises the descriptive error
            raise AssertionError  # unreachable
        # A pinned older writer drops fields it does not know (records are built for the newest
        # version); the newest writer is strict.
        return write_body(entry, entry.header, record, strict=entry is self._latest[name])

    # -- decoding ----------------------------------------------------------------------------

    def peek(self, data: bytes | bytearray | memoryview) -> tuple[str, int]:
        """(schema name, writer version) of an encoded record, without decoding its body."""
        entry = self._writer_entry(data)
        return entry.name, entry.version

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        expected: str | None = None,
        *,
        tail_view: bool = False,
    ) -> dict[str, Any]:
        """Decode into the shape of the newest version of its schema.

        ``expected``: the schema name the caller can handle; a record of another schema raises
        :class:`SchemaError` before its body is read.

        ``tail_view``: a last field of type ``bytes`` (a message's original) comes back as a
        ``memoryview`` of ``data`` instead of a copy, when ``data`` is ``bytes`` and writer and
        reader agree on that field. A copy of 100 KB is a fresh allocation whose pages fault in
        on every message; the stages that only put the original on the wire ask for the view.
        Whoever asks must treat the field as ``bytes | memoryview`` (``in`` on a memoryview
        compares integers, see :func:`mailjournal.smtp.wire.contains`).
        """
        return self.decode_with_name(data, expected, tail_view=tail_view)[1]

    def decode_with_name(
        self,
        data: bytes | bytearray | memoryview,
        expected: str | None = None,
        *,
        tail_view: bool = False,
    ) -> tuple[str, dict[str, Any]]:
        """(schema name, record): for consumers of topics that carry several event types."""
        writer = self._writer_entry(data)
        if expected is not None and writer.name != expected:
            raise SchemaError(
                f"expected a {expected} record, got {writer.name} (v{writer.version})"
            )
        reader = self._latest[writer.name]
        tail = writer.tail_bytes
        viewed = (
            tail_view
            and isinstance(data, bytes)
            and tail is not None
            and reader.tail_bytes == tail
            and writer.head_schema is not None
            and reader.head_schema is not None
        )
        try:
            if writer is reader and writer.program is not None:
                # the native codec (schemas.native); the tail comes back as where it lies
                record, end, start, length = _avro.decode(
                    writer.program, data, HEADER_SIZE, bool(viewed)
                )
                if viewed:
                    record[str(tail)] = memoryview(data)[start : start + length]
            else:
                record, end = _fastavro_decode(writer, reader, data, bool(viewed))
        except Exception as exc:
            raise SchemaError(
                f"cannot decode {writer.name} v{writer.version} record of {len(data)} bytes "
                f"(truncated or corrupt): {type(exc).__name__}: {exc}"
            ) from exc
        if end != len(data):
            raise SchemaError(
                f"corrupt {writer.name} v{writer.version} record: {len(data) - end} unexpected "
                f"bytes after the end of the record"
            )
        if not isinstance(record, dict):  # only records are registered; keeps the types honest
            raise SchemaError(f"decoded {writer.name} is not a record")
        return writer.name, record

    def _writer_entry(self, data: bytes | bytearray | memoryview) -> SchemaEntry:
        if len(data) < HEADER_SIZE:
            raise SchemaError(
                f"not an Avro single-object record: {len(data)} bytes, shorter than the "
                f"{HEADER_SIZE}-byte header"
            )
        if data[:2] != MAGIC:
            raise SchemaError(
                f"not an Avro single-object record: starts with {bytes(data[:2]).hex()}, "
                f"expected magic {MAGIC.hex()}"
            )
        fp = bytes(data[2:HEADER_SIZE])
        entry = self._by_fingerprint.get(fp)
        if entry is None:
            raise SchemaError(
                f"unknown writer schema fingerprint {fp.hex()} (CRC-64-AVRO): the record was "
                f"written with a schema version this build does not keep (a newer producer, or a "
                f"removed version); known schemas: {', '.join(self.names())}"
            )
        return entry


def _fastavro_decode(
    writer: SchemaEntry, reader: SchemaEntry, data: bytes | bytearray | memoryview, viewed: bool
) -> tuple[Any, int]:
    """(record, octets read) by fastavro, resolving ``writer``'s schema to ``reader``'s;
    ``viewed``: the tail field as a view of ``data`` (see :meth:`Codec.decode`)."""
    # BytesIO over bytes shares the buffer (no copy) until written to; we only read.
    fo = io.BytesIO(data)
    fo.seek(HEADER_SIZE)
    if not viewed:
        record = fastavro.schemaless_reader(
            fo, writer.schema, None if writer is reader else reader.schema
        )
        return record, fo.tell()
    # Avro writes a record's fields in order: the head, then the tail's length and bytes, which
    # must end the record exactly.
    assert writer.head_schema is not None and reader.head_schema is not None
    tail = writer.tail_bytes
    record = fastavro.schemaless_reader(
        fo, writer.head_schema, None if writer is reader else reader.head_schema
    )
    length = fastavro.schemaless_reader(fo, _LONG, None)
    start = fo.tell()
    assert isinstance(length, int)
    if length < 0 or start + length > len(data):
        raise ValueError(f"{tail} of {length} bytes does not fit in the record")
    if isinstance(record, dict):
        record[str(tail)] = memoryview(data)[start : start + length]
    return record, start + length


# -------------------------------------------------------------------------------------------------
# Module-level API over the packaged schemas (parsed once, at import).

WRITE_VERSIONS_ENV = "MAILJOURNAL_SCHEMA_WRITE_VERSIONS"


def _write_versions_from_env() -> dict[str, int]:
    # e.g. "JournalCopy=1,DeliveryOutcome=1": lets operators hold writers on an old version
    # during a rolling upgrade without a code change.
    pins: dict[str, int] = {}
    for item in os.environ.get(WRITE_VERSIONS_ENV, "").split(","):
        if not item.strip():
            continue
        name, sep, version = item.partition("=")
        if not sep or not version.strip().isdigit():
            raise SchemaError(f"{WRITE_VERSIONS_ENV}: expected Name=version, got {item!r}")
        pins[name.strip()] = int(version)
    return pins


_DEFAULT = Codec(write_versions=_write_versions_from_env())


def default_codec() -> Codec:
    """The codec of every stage, the dlq and the audit: one per process, over the packaged
    schemas, writers pinned by the environment. One choice for all of them, because a record is
    read by stages other than the one that wrote it (the module-level functions below use it)."""
    return _DEFAULT


def names() -> list[str]:
    return _DEFAULT.names()


def schema_versions(name: str) -> list[SchemaVersion]:
    """Every kept version of ``name``, oldest first, as (version, parsed schema)."""
    return _DEFAULT.schema_versions(name)


def latest(name: str) -> SchemaVersion:
    """The newest version of ``name``: (version, parsed schema)."""
    return _DEFAULT.latest(name)


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Single-object encoding of ``record`` with the newest version of schema ``name``."""
    return _DEFAULT.encode(name, record)


def decode(
    data: bytes | bytearray | memoryview, expected: str | None = None, *, tail_view: bool = False
) -> dict[str, Any]:
    """Decode a single-object record; SchemaError if undecodable or not of schema ``expected``
    (``tail_view``: see :meth:`Codec.decode`)."""
    return _DEFAULT.decode(data, expected, tail_view=tail_view)


def decode_with_name(data: bytes | bytearray | memoryview) -> tuple[str, dict[str, Any]]:
    """(schema name, record) of a single-object record."""
    return _DEFAULT.decode_with_name(data)


def peek(data: bytes | bytearray | memoryview) -> tuple[str, int]:
    """(schema name, writer version) without decoding the body."""
    return _DEFAULT.peek(data)
