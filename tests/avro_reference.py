"""fastavro as the reference of the native Avro codec (``schemas/_avro.c``): generated records of
any kept schema, the reference's encode and decode, a comparison that tells ``True`` from ``1``,
and the one differential check of a body that both the property tests and the fuzzer run."""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import fastavro
from hypothesis import strategies as st

from schemas import _avro
from schemas.codec import SchemaEntry

# what from_millis can give back: year 1 to year 9999
MIN_MS, MAX_MS = -62135596800000, 253402300799999

# the documented refusals of the native decoder (schemas.native): damage no Avro writer makes
NATIVE_ONLY_REFUSALS = (
    "a boolean of",
    "longer than 64 bits",
    "index -",
    "block count out of range",
)


def records(schema: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid records of a top-level record schema (as JSON-decoded); fields with a default are
    sometimes left out."""
    return _Strategies().of(schema, "")


class _Strategies:
    def __init__(self) -> None:
        self.named: dict[str, st.SearchStrategy[Any]] = {}

    def of(self, schema: Any, namespace: str) -> st.SearchStrategy[Any]:
        if isinstance(schema, list):
            return st.one_of(*(self.of(b, namespace) for b in schema))
        if isinstance(schema, str):
            primitive = _PRIMITIVE.get(schema)
            if primitive is not None:
                return primitive
            full = f"{namespace}.{schema}" if namespace and "." not in schema else schema
            return self.named.get(full) or self.named[schema]
        kind = schema["type"]
        if schema.get("logicalType") == "timestamp-millis":
            return st.one_of(
                st.integers(MIN_MS, MAX_MS),
                st.datetimes(timezones=st.just(UTC)),
                st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
            )
        if kind == "array":
            return st.lists(self.of(schema["items"], namespace), max_size=4)
        if kind == "map":
            return st.dictionaries(
                st.text(max_size=6), self.of(schema["values"], namespace), max_size=3
            )
        if kind in ("record", "enum"):
            name = schema["name"]
            space = schema.get("namespace", namespace)
            full = name if "." in name or not space else f"{space}.{name}"
            if kind == "enum":
                strategy: st.SearchStrategy[Any] = st.sampled_from(schema["symbols"])
            else:
                inner = full.rsplit(".", 1)[0] if "." in full else ""
                required = {}
                optional = {}
                for field in schema["fields"]:
                    value = self.of(field["type"], inner)
                    (optional if "default" in field else required)[field["name"]] = value
                strategy = st.fixed_dictionaries(required, optional=optional)
            self.named[full] = strategy
            return strategy
        return self.of(kind, namespace)


_PRIMITIVE: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "string": st.text(max_size=20),
    "bytes": st.binary(max_size=20),
}


def reference_encode(entry: SchemaEntry, record: Mapping[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, entry.schema, record, strict_allow_default=True)
    return out.getvalue()


def reference_decode(entry: SchemaEntry, body: bytes) -> tuple[Any, int]:
    """(record, octets read) by fastavro."""
    fo = io.BytesIO(body)
    return fastavro.schemaless_reader(fo, entry.schema, None), fo.tell()


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (``True == 1`` is not the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime):
        return a == b and a.tzinfo == b.tzinfo
    return bool(a == b)


def check_decode(entry: SchemaEntry, body: bytes) -> None:
    """Native and reference decoding of any octets agree: the same record read over the same
    octets, or both refuse (the native decoder alone only for a documented refusal)."""
    assert entry.program is not None
    try:
        native, end, _, _ = _avro.decode(entry.program, body, 0, False)
    except (ValueError, OverflowError) as exc:
        native_error: Exception | None = exc
    else:
        native_error = None
    try:
        reference, read = reference_decode(entry, body)
    except Exception as exc:  # fastavro raises what the damage makes: EOFError, IndexError, ...
        assert native_error is not None, (
            f"native decoded what fastavro refuses ({type(exc).__name__}: {exc})"
        )
        return
    if native_error is not None:
        assert any(r in str(native_error) for r in NATIVE_ONLY_REFUSALS), (
            f"native refused what fastavro reads: {native_error}"
        )
        return
    assert end == read
    assert same(native, reference), (native, reference)
