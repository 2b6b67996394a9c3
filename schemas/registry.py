"""Optional Confluent Schema Registry wire format for the same schemas.

Wire format (Confluent): ``00 | schema id (4 bytes, big-endian) | Avro body``. Schemas are
registered under the record-name subject strategy (subject = full record name, e.g.
``mailjournal.events.JournalCopy``) because :meth:`RegistryCodec.encode` is not told the topic.
Only the standard library talks to the registry (urllib, REST API v1); ids are cached, so the
registry is contacted once per schema per process.

Decoding also accepts Avro single-object records (``C3 01``), so a topic can move from one
format to the other without a flag day.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import fastavro

from schemas.codec import MAGIC, Codec, SchemaEntry, SchemaError, default_codec, write_body

__all__ = ["CONFLUENT_MAGIC", "RegistryCodec"]

CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER = 5
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryCodec:
    """Encode/decode in Confluent wire format against a Schema Registry at ``url``."""

    def __init__(
        self,
        url: str,
        codec: Codec | None = None,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.codec = codec or default_codec()
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._lock = threading.Lock()
        self._ids: dict[str, tuple[int, SchemaEntry]] = {}  # schema name -> (id, newest entry)
        self._writers: dict[int, tuple[str, dict[str, Any]]] = {}  # id -> (name, parsed)

    # -- REST ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE, **self._headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise SchemaError(
                f"schema registry {method} {path} failed: HTTP {exc.code} {detail}"
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SchemaError(f"schema registry {method} {path} failed: {exc}") from exc

    def subject(self, name: str) -> str:
        """Registry subject of schema ``name`` (record-name strategy: its full name)."""
        return str(self.codec.entry(name).schema["name"])

    def schema_id(self, name: str) -> int:
        """Id of the newest version of ``name``, registering it on first use."""
        cached = self._ids.get(name)
        if cached is not None:
            return cached[0]
        with self._lock:
            cached = self._ids.get(name)
            if cached is not None:
                return cached[0]
            entry = self.codec.writer_entry(name)
            subject = urllib.parse.quote(self.subject(name), safe="")
            # The full schema (docs, defaults, logical types), not the canonical form: the
            # registry is where people read the documentation.
            reply = self._request(
                "POST",
                f"/subjects/{subject}/versions",
                {"schemaType": "AVRO", "schema": json.dumps(entry.source)},
            )
            try:
                schema_id = int(reply["id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SchemaError(f"schema registry returned no id for {name}: {reply!r}") from exc
            self._ids[name] = (schema_id, entry)
            self._writers[schema_id] = (name, entry.schema)
            return schema_id

    def _writer(self, schema_id: int) -> tuple[str, dict[str, Any]]:
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._writers.get(schema_id)
            if cached is not None:
                return cached
            reply = self._request("GET", f"/schemas/ids/{schema_id}")
            try:
                source = json.loads(reply["schema"])
                parsed = fastavro.parse_schema(source, named_schemas={})
            except Exception as exc:
                raise SchemaError(
                    f"schema registry id {schema_id}: unusable schema: {exc}"
                ) from exc
            if not isinstance(parsed, dict) or parsed.get("type") != "record":
                raise SchemaError(f"schema registry id {schema_id} is not a record schema")
            fullname = parsed.get("name")
            ours = {str(self.codec.entry(n).schema["name"]): n for n in self.codec.names()}
            name = ours.get(str(fullname))
            if name is None:
                raise SchemaError(
                    f"schema registry id {schema_id} is {fullname!r}, not one of ours "
                    f"({', '.join(sorted(ours))})"
                )
            self._writers[schema_id] = (name, parsed)
            return name, parsed

    # -- codec ---------------------------------------------------------------------------------

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Confluent-framed encoding with the codec's writer version of ``name``."""
        schema_id = self.schema_id(name)
        entry = self._ids[name][1]
        prefix = bytes((CONFLUENT_MAGIC,)) + schema_id.to_bytes(4, "big")
        return write_body(entry, prefix, record, strict=entry is self.codec.entry(name))

    def decode(
        self, data: bytes | bytearray | memoryview, expected: str | None = None
    ) -> dict[str, Any]:
        return self.decode_with_name(data, expected)[1]

    def decode_with_name(
        self, data: bytes | bytearray | memoryview, expected: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        if len(data) >= 2 and data[:2] == MAGIC:
            return self.codec.decode_with_name(data, expected)
        if len(data) < _CONFLUENT_HEADER:
            raise SchemaError(
                f"not a Confluent-framed record: {len(data)} bytes, shorter than the header"
            )
        if data[0] != CONFLUENT_MAGIC:
            raise SchemaError(
                f"not a Confluent-framed or single-object record: starts with "
                f"{bytes(data[:2]).hex()}"
            )
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER], "big")
        name, writer = self._writer(schema_id)
        if expected is not None and name != expected:
            raise SchemaError(f"expected a {expected} record, got {name} (registry id {schema_id})")
        reader = self.codec.entry(name).schema
        fo = io.BytesIO(data)
        fo.seek(_CONFLUENT_HEADER)
        try:
            record = fastavro.schemaless_reader(fo, writer, None if writer is reader else reader)
        except Exception as exc:
            raise SchemaError(
                f"cannot decode {name} record (registry id {schema_id}) of {len(data)} bytes "
                f"(truncated or corrupt): {type(exc).__name__}: {exc}"
            ) from exc
        if fo.tell() != len(data):
            raise SchemaError(
                f"corrupt {name} record (registry id {schema_id}): "
                f"{len(data) - fo.tell()} unexpected bytes after the end of the record"
            )
        if not isinstance(record, dict):
            raise SchemaError(f"decoded {name} is not a record")
        return name, record
