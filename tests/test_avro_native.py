"""The native Avro codec (``schemas/_avro.c``, compiled by ``schemas/native.py``) against
fastavro, the reference, over generated records of every kept schema version: the same bytes,
the same values and types, and no record either one refuses that the other takes, beyond the
refusals :mod:`schemas.native` documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import _avro
from schemas import codec as codec_module
from schemas.codec import SchemaEntry, SchemaError
from schemas.native import Unsupported, compile_schema, to_millis
from tests.avro_reference import (
    check_decode,
    records,
    reference_decode,
    reference_encode,
    same,
)
from tests.test_schemas import message_received

CODEC = codec_module.default_codec()
ENTRIES = [e for n in CODEC.names() for e in CODEC.entries(n)]
IDS = [f"{e.name}-v{e.version}" for e in ENTRIES]
# 13 schema versions: a few dozen records each keeps the file near a minute on a slow box
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DAMAGE_SETTINGS = settings(SETTINGS, max_examples=120)


def test_every_kept_schema_version_compiles() -> None:
    # a schema that falls back to fastavro would lose the speed silently: say so here
    assert [f"{e.name}-v{e.version}" for e in ENTRIES if e.program is None] == []


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_native_encode_is_fastavro_encode(entry: SchemaEntry, data: st.DataObject) -> None:
    assert entry.program is not None
    record = data.draw(records(entry.source))
    assert _avro.encode(entry.program, record, b"") == reference_encode(entry, record)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_native_decode_is_fastavro_decode(entry: SchemaEntry, data: st.DataObject) -> None:
    body = reference_encode(entry, data.draw(records(entry.source)))
    assert entry.program is not None
    native, end, _, _ = _avro.decode(entry.program, body, 0, False)
    reference, read = reference_decode(entry, body)
    assert end == read == len(body)
    assert same(native, reference)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@DAMAGE_SETTINGS
@given(data=st.data())
def test_damaged_bodies_decode_alike(entry: SchemaEntry, data: st.DataObject) -> None:
    body = bytearray(reference_encode(entry, data.draw(records(entry.source))))
    damage = data.draw(st.sampled_from(["truncate", "flip", "insert", "random"]))
    if damage == "truncate":
        del body[data.draw(st.integers(0, len(body))) :]
    elif damage == "flip" and body:
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    elif damage == "insert":
        i = data.draw(st.integers(0, len(body)))
        body[i:i] = data.draw(st.binary(min_size=1, max_size=12))
    else:
        body = bytearray(data.draw(st.binary(max_size=200)))
    check_decode(entry, bytes(body))


# values of the wrong type for any field: what fastavro refuses, the native codec refuses too
WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _replace_one(record: Any, data: st.DataObject) -> Any:
    """``record`` with one value somewhere in it replaced by a value of any type."""
    if isinstance(record, dict) and record and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(record)))
        return {**record, key: _replace_one(record[key], data)}
    if isinstance(record, list) and record and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(record) - 1))
        return [*record[:i], _replace_one(record[i], data), *record[i + 1 :]]
    return data.draw(WRONG)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_wrong_values_are_refused_as_fastavro_refuses(
    entry: SchemaEntry, data: st.DataObject
) -> None:
    assert entry.program is not None
    record = _replace_one(data.draw(records(entry.source)), data)
    try:
        reference: bytes | None = reference_encode(entry, record)
    except Exception:
        reference = None
    try:
        native: bytes | None = _avro.encode(entry.program, record, b"")
    except (ValueError, TypeError, OverflowError) as exc:
        # refused by both, or a coercion of fastavro's the native codec refuses (see
        # schemas.native): a float or a bool for a number, an int out of range, a non-bool, a
        # non-None for null
        if reference is not None:
            assert "must be" in str(exc) or "out of range" in str(exc), exc
        return
    assert reference is not None, "native encoded what fastavro refuses"
    assert native == reference


def test_refusals_name_the_field_path() -> None:
    record = CODEC.decode(CODEC.encode("MessageReceived", message_received()), "MessageReceived")
    record["recipients"][0]["address"] = 5
    with pytest.raises(SchemaError, match=r"\.recipients\.address: must be string, not int"):
        CODEC.encode("MessageReceived", record)
    record["recipients"][0]["address"] = "a@b"
    record["size"] = 1.5
    with pytest.raises(SchemaError, match=r"\.size: must be an int, not float"):
        CODEC.encode("MessageReceived", record)


def test_a_str_subclass_is_encoded_by_its_text() -> None:
    from enum import StrEnum

    class Kind(StrEnum):  # a member whose name is not its value hashes as its name
        JOURNAL_COPY = "JOURNAL"

    program = compile_schema(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "k", "type": {"type": "enum", "name": "K", "symbols": ["NDR", "JOURNAL"]}},
                {"name": "s", "type": "string"},
            ],
        }
    )
    assert _avro.encode(program, {"k": Kind.JOURNAL_COPY, "s": Kind.JOURNAL_COPY}, b"") == (
        b"\x02\x0eJOURNAL"
    )


def test_timestamps_as_fastavro_has_them() -> None:
    aware = datetime(1960, 1, 1, 0, 0, 0, 999, tzinfo=UTC)  # before the epoch: rounded down
    assert to_millis(aware) == -315619200000
    program = compile_schema(
        {
            "type": "record",
            "name": "T",
            "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
        }
    )
    (decoded, _, _, _) = _avro.decode(program, _avro.encode(program, {"t": aware}, b""), 0, False)
    assert decoded["t"] == datetime(1960, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="datetime or an int"):
        _avro.encode(program, {"t": "2026-01-01"}, b"")
    with pytest.raises(ValueError, match="out of range"):
        _avro.encode(program, {"t": 2**63}, b"")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["string", "long"]}]},
        {"type": "record", "name": "F", "fields": [{"name": "f", "type": "double"}]},
        {
            "type": "record",
            "name": "A",
            "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}],
        },
        {
            "type": "record",
            "name": "L",
            "fields": [{"name": "n", "type": ["null", "L"], "default": None}],
        },
        {
            "type": "record",
            "name": "D",
            "fields": [{"name": "d", "type": {"type": "int", "logicalType": "date"}}],
        },
    ],
    ids=["union", "double", "array-of-null", "recursive", "date"],
)
def test_what_it_does_not_compile_is_left_to_fastavro(schema: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        compile_schema(schema)


def test_an_array_count_larger_than_the_record_is_refused_before_allocating() -> None:
    program = compile_schema(
        {
            "type": "record",
            "name": "C",
            "fields": [{"name": "a", "type": {"type": "array", "items": "long"}}],
        }
    )
    huge = bytes([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])  # 2**62 - 1 items
    with pytest.raises(ValueError, match="does not fit"):
        _avro.decode(program, huge + b"\x02", 0, False)


def test_a_block_count_of_the_smallest_long_is_refused() -> None:
    # found by make fuzz-codec: fastavro negates the count in 64 bits, the negation overflows
    # and it reads the block as empty; no writer makes it
    entry = CODEC.entry("JournalCheckpoint", 1)
    assert entry.program is not None
    body = bytes.fromhex("0000" + "ff" * 9 + "01" + "00" * 7)  # two fields, then -2**63 items
    reference_decode(entry, body)  # fastavro reads it (raises otherwise)
    with pytest.raises(ValueError, match="block count out of range"):
        _avro.decode(entry.program, body, 0, False)
    check_decode(entry, body)  # a documented refusal of the native decoder alone


def test_the_view_of_the_tail_is_where_the_bytes_are() -> None:
    message = message_received()
    encoded = CODEC.encode("MessageReceived", message)
    entry = CODEC.entry("MessageReceived")
    assert entry.program is not None
    record, end, start, length = _avro.decode(entry.program, encoded, 10, True)
    assert end == len(encoded) and record["raw"] is None
    assert encoded[start : start + length] == message["raw"]
