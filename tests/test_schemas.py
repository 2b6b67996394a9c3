"""Event schemas and codec: round trips, compatibility across every kept version, failure modes,
and event ids."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import random
import re
import shutil
import threading
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import pytest

import schemas
from mailjournal.smtp.wire import BodyFacts
from schemas import codec, events, records
from schemas.codec import MAGIC, Codec, SchemaError, fingerprint64
from tests.fixtures.smtp import wait_until

AVRO_ROOT = Path(str(resources.files("schemas") / "avro"))
NOW = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)  # millisecond precision

# -------------------------------------------------------------------------------------------------
# Sample records


def raw_message(body: bytes = b"Hello.\r\n") -> bytes:
    head = (
        "From: =?utf-8?q?J=C3=BCrgen?= <jürgen@extern.example>\r\n"
        "To: user@corp.example\r\n"
        "Subject: Grüße aus Köln — 日本語\r\n"
        "Message-ID: <a1@extern.example>\r\n"
        "\r\n"
    ).encode()
    return head + body


def message_received(raw: bytes | None = None, **overrides: Any) -> dict[str, Any]:
    raw = raw_message() if raw is None else raw
    record: dict[str, Any] = {
        "event_id": events.new_event_id(),
        "received_at": NOW,
        "ingest_host": "ingest-7f9c-0",
        "listener": "mx",
        "listener_role": events.ListenerRole.INTERNET,
        "client": {
            "ip": "2001:db8::25",
            "port": 49152,
            "helo": "mail.extern.example",
            "proxied_by": "10.0.0.5",
        },
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
        "auth_user": None,
        "mail_from": "jürgen@extern.example",
        "mail_params": {
            "size": len(raw),
            "body": "8BITMIME",
            "smtputf8": True,
            "ret": "HDRS",
            "envid": "QQ314159",
            "other": {"X-FOO": "bär", "HOLDFOR": ""},
        },
        "recipients": [
            {
                "address": "user@corp.example",
                "notify": ["FAILURE", "DELAY"],
                "orcpt": "rfc822;user@corp.example",
                "other": {},
            },
            {"address": "用户@corp.example", "notify": None, "orcpt": None, "other": {}},
        ],
        "headers": {
            "message_id": "<a1@extern.example>",
            "subject": "Grüße aus Köln — 日本語",
            "from_": "=?utf-8?q?J=C3=BCrgen?= <jürgen@extern.example>",
            "to": "user@corp.example",
            "cc": None,
            "date": "Fri, 14 Mar 2025 15:09:26 +0000",
            "auto_submitted": None,
            "journal_stamp": None,
            "ms_journal_report": None,
        },
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "prepended_length": 0,
        "received_sha256": hashlib.sha256(raw).hexdigest(),
        "message_id_added": False,
        "body_facts": BodyFacts.of(raw).record(),
        "raw": raw,
    }
    record.update(overrides)
    return record


def journal_copy(original: bytes | None = None, **overrides: Any) -> dict[str, Any]:
    event_id = events.new_event_id()
    record: dict[str, Any] = {
        "copy_id": events.make_copy_id(event_id, "journal-in@corp.example"),
        "event_id": event_id,
        "kind": events.JournalCopyKind.JOURNAL,
        "received_at": NOW,
        "directions": [events.Direction.INBOUND, events.Direction.OUTBOUND],
        "sources": [events.JournalSource.GLOBAL, events.JournalSource.RECIPIENT],
        "journal_address": "journal-in@corp.example",
        "ndr_address": "journal-ndr@corp.example",
        "format": events.ReportFormat.REPORT,
        "original_sender": "",
        "recipients": [
            {"address": "user@corp.example", "type": "TO", "expanded": None, "forwarded": None},
            {
                "address": "ünïcode@corp.example",
                "type": events.RecipientType.BCC,
                "expanded": "all-staff@corp.example",
                "forwarded": "archive@corp.example",
            },
        ],
        "message_id": "<a1@extern.example>",
        "subject": "Grüße",
        "attempt": 3,
        "not_before": NOW + timedelta(minutes=5),
        "first_attempt_at": NOW,
        "last_reply": "451 4.3.0 Try again later",
        "original": raw_message() if original is None else original,
        "body_facts": None,  # a copy whose facts were not carried (delivery learns them)
        "about_copy_id": None,
        "relay": None,
        "replay_run": None,
        "policy_digest": "sha256:" + "ab" * 32,
    }
    record.update(overrides)
    return record


def delivery_outcome(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "copy_id": "01JPAYXN1N0000000000000000.abcdef0123456789",
        "event_id": "01JPAYXN1N0000000000000000",
        "kind": "JOURNAL",
        "status": events.OutcomeStatus.NDR_SENT,
        "journal_address": "journal-out@corp.example",
        "ndr_address": "journal-ndr@corp.example",
        "directions": ["OUTBOUND"],
        "attempts": 12,
        "remote_reply": "550 5.1.1 <journal-out@corp.example>: Recipient unknown — ä",
        "at": NOW,
        "next_attempt_at": None,
        "ndr_copy_id": "01JPAYXN1N0000000000000000.abcdef0123456789.ndr",
        "delivered_to_host": None,
    }
    record.update(overrides)
    return record


def dead_letter(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": events.new_event_id(),
        "at": NOW,
        "reason": "SchemaError: unknown writer schema fingerprint — ö",
        "source_topic": "mailjournal.journal",
        "partition": 7,
        "offset": 2**40 + 3,
        "key": b"\x00\xffkey",
        "value": b"\xc3\x01garbage",
        "headers": {"trace": b"\x01\x02", "empty": b""},
        "copy_id": None,
        "event_id": "01JPAYXN1N0000000000000000",
    }
    record.update(overrides)
    return record


def journal_receipt(**overrides: Any) -> dict[str, Any]:
    copy = {
        "copy_id": "01JPAYXN1N0000000000000000.abcdef0123456789",
        "journal_address": "journal-in@corp.example",
        "format": "REPORT",
        "directions": ["INBOUND"],
        "status": "DELIVERED",
        "last_reply": "250 2.0.0 Ok: queued as 4XyZ12",
        "delivered_to_host": "archive.corp.example:25",
        "ndr_copy_id": None,
        "attempts": 1,
        "final_at": 1741964966535,
        "policy_digest": "sha256:" + "ab" * 32,
    }
    record: dict[str, Any] = {
        "event_id": "01JPAYXN1N0000000000000000",
        "partition": 3,
        "seq": 41,
        "prev_hash": "cd" * 32,
        "written_at": 1741964967000,
        "received_at": 1741964966000,
        "message_sha256": "ef" * 32,
        "size": 1234,
        "mail_from": "jürgen@extern.example",
        "recipients": ["user@corp.example"],
        "directions": ["INBOUND"],
        "client": {
            "ip": "2001:db8::25",
            "helo": "mail.extern.example",
            "auth_user": None,
            "listener": "mx",
            "listener_role": "INTERNET",
            "tls": True,
            "trusted": False,
        },
        "copies": [copy],
        "policy_digest": "sha256:" + "ab" * 32,
        "key_id": "0123456789abcdef",
        "signature": "c2lnbmF0dXJl",
    }
    record.update(overrides)
    return record


def journal_checkpoint(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "checkpoint_id": "01JPAYXN1N0000000000000001",
        "at": 1741964968000,
        "heads": [
            {"partition": 0, "seq": -1, "hash": "0" * 64, "written_at": 0},
            {"partition": 1, "seq": 41, "hash": "cd" * 32, "written_at": 1741964967000},
        ],
        "policy_digest": "sha256:" + "ab" * 32,
        "key_id": "0123456789abcdef",
        "signature": "c2lnbmF0dXJl",
    }
    record.update(overrides)
    return record


def policy_change(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "change_id": "01JPAYXN1N0000000000000002",
        "at": 1741964968000,
        "old_digest": None,
        "new_digest": "sha256:" + "ab" * 32,
        "policy": '{"version":1}',
        "key_id": "0123456789abcdef",
        "signature": "c2lnbmF0dXJl",
    }
    record.update(overrides)
    return record


SAMPLES = {
    events.MESSAGE_RECEIVED: message_received,
    events.JOURNAL_COPY: journal_copy,
    events.DELIVERY_OUTCOME: delivery_outcome,
    events.DEAD_LETTER: dead_letter,
    events.JOURNAL_RECEIPT: journal_receipt,
    events.JOURNAL_CHECKPOINT: journal_checkpoint,
    events.POLICY_CHANGE: policy_change,
}


def roundtrip(name: str, record: dict[str, Any]) -> dict[str, Any]:
    data = codec.encode(name, record)
    assert data[:2] == MAGIC
    got_name, decoded = codec.decode_with_name(data)
    assert got_name == name
    return decoded


# -------------------------------------------------------------------------------------------------
# Round trips


def test_packaged_schemas_are_the_sampled_events() -> None:
    assert codec.names() == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_roundtrip_every_event(name: str) -> None:
    record = SAMPLES[name]()
    assert roundtrip(name, record) == record


def test_roundtrip_optional_fields_null_and_empty_collections() -> None:
    record = message_received(
        tls=None,
        recipients=[],
        mail_from="",  # null reverse-path <>
        mail_params={
            "size": None,
            "body": None,
            "smtputf8": False,
            "ret": None,
            "envid": None,
            "other": {},
        },
        headers=dict.fromkeys(events.SelectedHeaders.__annotations__),
        client={"ip": "192.0.2.1", "port": 25, "helo": "", "proxied_by": None},
    )
    assert roundtrip(events.MESSAGE_RECEIVED, record) == record

    ndr = journal_copy(
        kind=events.JournalCopyKind.NDR,
        recipients=[],
        directions=[],
        sources=[],
        message_id=None,
        subject=None,
        first_attempt_at=None,
        last_reply=None,
        not_before=0,
        original=b"",
        about_copy_id="01JPAYXN1N0000000000000000.abcdef0123456789",
    )
    decoded = roundtrip(events.JOURNAL_COPY, ndr)
    assert decoded["not_before"] == events.EPOCH  # 0 = "now"
    assert decoded == {**ndr, "not_before": events.EPOCH}

    letter = dead_letter(key=None, headers={}, value=b"")
    assert roundtrip(events.DEAD_LETTER, letter) == letter


def test_roundtrip_5mb_raw() -> None:
    body = random.Random(5).randbytes(5 * 1024 * 1024)
    record = message_received(raw=raw_message(body))
    data = codec.encode(events.MESSAGE_RECEIVED, record)
    assert len(data) < len(record["raw"]) + 2048
    decoded = codec.decode(data, expected=events.MESSAGE_RECEIVED)
    assert decoded["raw"] == record["raw"]
    assert decoded == record

    copy_record = journal_copy(original=record["raw"])
    assert roundtrip(events.JOURNAL_COPY, copy_record) == copy_record


@pytest.mark.parametrize(
    "size",
    [0, 1, codec.SPLICE_MIN_BYTES - 1, codec.SPLICE_MIN_BYTES, 2**21 + 3],
)
@pytest.mark.parametrize("name", [events.MESSAGE_RECEIVED, events.JOURNAL_COPY])
def test_large_payload_fast_path_is_byte_identical_to_fastavro(name: str, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    record = (
        message_received(raw=payload) if name == events.MESSAGE_RECEIVED else journal_copy(payload)
    )
    entry = codec.default_codec().entry(name)
    assert entry.tail_bytes in record
    data = codec.encode(name, record)
    assert data == entry.header + write_body_plain(entry.schema, record)
    assert codec.decode(data) == record
    # bytearray payloads take the same path
    record[str(entry.tail_bytes)] = bytearray(payload)
    assert codec.encode(name, record) == data


TAILED = [events.MESSAGE_RECEIVED, events.JOURNAL_COPY]


def tailed_record(name: str, payload: bytes) -> dict[str, Any]:
    return (
        message_received(raw=payload) if name == events.MESSAGE_RECEIVED else journal_copy(payload)
    )


@pytest.mark.parametrize("size", [0, 1, 127, 128, codec.SPLICE_MIN_BYTES, 2**21 + 3])
@pytest.mark.parametrize("name", TAILED)
def test_tail_view_is_the_decoded_record_with_the_original_a_view(name: str, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    data = codec.encode(name, tailed_record(name, payload))
    plain = codec.decode(data, expected=name)
    viewed = codec.decode(data, expected=name, tail_view=True)
    tail = str(codec.default_codec().entry(name).tail_bytes)
    view = viewed[tail]
    assert isinstance(view, memoryview) and view.obj is data  # no copy of the original
    assert view == payload
    assert {**viewed, tail: bytes(view)} == plain
    # a viewed record re-encodes (a retry tier, a dead letter) to the very same bytes
    assert codec.encode(name, viewed) == data


@pytest.mark.parametrize(
    ("name", "version"), [(n, v) for n in TAILED for v, _ in codec.schema_versions(n)]
)
def test_tail_view_of_every_kept_writer_version(name: str, version: int) -> None:
    """What an older producer wrote is resolved to the newest version with the view as well."""
    old = codec.default_codec().entry(name, version)
    rng = random.Random(f"view{name}{version}")
    for nulls in (False, True):
        datum = sample_datum(old.schema, old.schema["__named_schemas"], rng, nulls)
        data = old.header + write_body_plain(old.schema, datum)
        plain = codec.decode(data, expected=name)
        viewed = codec.decode(data, expected=name, tail_view=True)
        tail = str(old.tail_bytes)
        assert isinstance(viewed[tail], memoryview)
        assert {**viewed, tail: bytes(viewed[tail])} == plain


@pytest.mark.parametrize("name", TAILED)
def test_tail_view_refuses_what_the_plain_decode_refuses(name: str) -> None:
    """Differential over truncation, an appended byte, and random corruption (lengths included):
    the view decodes exactly the records the plain decode does, to the same values."""
    data = codec.encode(name, tailed_record(name, b"Subject: x\r\n\r\nbody\r\n" * 20))
    tail = str(codec.default_codec().entry(name).tail_bytes)
    rng = random.Random(f"corrupt{name}")
    variants = [data[:cut] for cut in range(len(data))] + [data + b"\x00", data + b"\x80"]
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(codec.HEADER_SIZE, len(data))] = rng.randrange(256)
        variants.append(bytes(mutated))
    agreed = 0
    for variant in variants:
        try:
            plain: dict[str, Any] | None = codec.decode(variant, expected=name)
        except SchemaError:
            plain = None
        try:
            viewed: dict[str, Any] | None = codec.decode(variant, expected=name, tail_view=True)
        except SchemaError:
            viewed = None
        if plain is None or viewed is None:
            assert plain is None and viewed is None, variant
            continue
        assert {**viewed, tail: bytes(viewed[tail])} == plain
        agreed += 1
    assert agreed > 1  # some corruptions still decode (a changed character): both ways alike


def test_tail_view_leaves_other_inputs_to_the_plain_decode() -> None:
    data = codec.encode(events.JOURNAL_COPY, journal_copy(original=b"body"))
    assert codec.decode(bytearray(data), tail_view=True)["original"] == b"body"
    assert isinstance(codec.decode(bytearray(data), tail_view=True)["original"], bytes)
    outcome = codec.encode(events.DELIVERY_OUTCOME, delivery_outcome())  # no bytes tail
    assert codec.decode(outcome, tail_view=True) == codec.decode(outcome)


def test_large_payload_fast_path_still_validates() -> None:
    record = message_received(raw=b"x" * (codec.SPLICE_MIN_BYTES * 2))
    record["headers"]["form_"] = record["headers"].pop("from_")
    with pytest.raises(SchemaError, match="form_"):
        codec.encode(events.MESSAGE_RECEIVED, record)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    record = delivery_outcome()
    data = codec.encode(events.DELIVERY_OUTCOME, record)
    assert codec.decode(bytearray(data)) == record
    assert codec.decode(memoryview(data)) == record


def test_timestamps_accept_int_millis_and_decode_to_aware_utc() -> None:
    ms = events.to_millis(NOW)
    decoded = roundtrip(events.DELIVERY_OUTCOME, delivery_outcome(at=ms, next_attempt_at=ms + 1))
    assert decoded["at"] == NOW and decoded["at"].tzinfo is not None
    assert decoded["next_attempt_at"] == NOW + timedelta(milliseconds=1)
    assert events.from_millis(ms) == NOW


def test_enum_values_compare_equal_to_python_enums() -> None:
    decoded = roundtrip(events.JOURNAL_COPY, journal_copy())
    assert decoded["kind"] == events.JournalCopyKind.JOURNAL
    assert decoded["directions"] == [events.Direction.INBOUND, events.Direction.OUTBOUND]
    assert events.RecipientType(decoded["recipients"][1]["type"]) is events.RecipientType.BCC


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("event_id"), "event_id"),
        (lambda r: r.update(evnt_id="x"), "more fields"),
        (lambda r: r["headers"].update(from_=1), "string"),
        (lambda r: r.update(size="big"), "size"),
    ],
)
def test_encode_rejects_invalid_records(mutate: Any, match: str) -> None:
    record = message_received()
    mutate(record)
    with pytest.raises(SchemaError, match=match):
        codec.encode(events.MESSAGE_RECEIVED, record)


def test_encode_rejects_unknown_enum_symbol_and_unknown_schema() -> None:
    with pytest.raises(SchemaError, match="EXPIRED"):
        codec.encode(events.DELIVERY_OUTCOME, delivery_outcome(status="EXPIRED"))
    with pytest.raises(SchemaError, match="unknown schema 'Nope'"):
        codec.encode("Nope", {})


def test_fields_with_defaults_may_be_omitted() -> None:
    record = dead_letter()
    for field in ("key", "headers", "copy_id", "event_id"):
        del record[field]
    decoded = roundtrip(events.DEAD_LETTER, record)
    assert decoded["key"] is None and decoded["headers"] == {} and decoded["copy_id"] is None


# -------------------------------------------------------------------------------------------------
# Schema files: conventions, and the Python mirrors in schemas.events


def schema_files() -> list[Path]:
    files = sorted(AVRO_ROOT.glob("*/*.avsc"))
    assert files
    return files


def walk_named(schema: Any) -> Iterator[dict[str, Any]]:
    """Every named type (record, enum, fixed) defined inside a JSON schema."""
    if isinstance(schema, list):
        for branch in schema:
            yield from walk_named(branch)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            yield schema
        for field in schema.get("fields", []):
            yield from walk_named(field["type"])
        for key in ("items", "values"):
            if key in schema:
                yield from walk_named(schema[key])


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_schema_file_conventions(path: Path) -> None:
    assert re.fullmatch(r"v[1-9][0-9]*\.avsc", path.name)
    source = json.loads(path.read_text(encoding="utf-8"))
    assert source["type"] == "record"
    assert source["name"] == path.parent.name
    assert source["namespace"] == events.NAMESPACE
    for named in walk_named(source):
        assert named.get("doc"), f"{named['name']} has no doc"
        assert "namespace" not in named or named["namespace"] == events.NAMESPACE
        if named["type"] == "enum":
            assert named.get("default") in named["symbols"], f"{named['name']} has no default"
        for field in named.get("fields", []):
            assert field.get("doc"), f"{named['name']}.{field['name']} has no doc"
            ftype = field["type"]
            if isinstance(ftype, list) and "null" in ftype:
                assert ftype[0] == "null" and field.get("default", "") is None, field["name"]


def test_shared_named_types_are_identical_across_files() -> None:
    definitions: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in codec.names():
        entry = codec.default_codec().entry(name)
        for named in walk_named(entry.source):
            if named is entry.source:
                continue
            seen = definitions.setdefault(named["name"], (name, named))
            assert seen[1] == named, f"{named['name']} differs between {seen[0]} and {name}"
    assert {"Direction", "JournalCopyKind"} <= definitions.keys()


def test_python_enums_mirror_schema_symbols() -> None:
    found: dict[str, list[str]] = {}
    for name in codec.names():
        for named in walk_named(codec.default_codec().entry(name).source):
            if named["type"] == "enum":
                found[named["name"]] = named["symbols"]
    assert found.keys() == events.ENUMS.keys()
    for enum_name, symbols in found.items():
        assert [m.value for m in events.ENUMS[enum_name]] == symbols


def test_typed_dicts_mirror_schema_fields() -> None:
    for name in codec.names():
        for named in walk_named(codec.default_codec().entry(name).source):
            if named["type"] != "record":
                continue
            typed = getattr(events, named["name"])
            hints = typing.get_type_hints(typed)
            assert list(hints) == [f["name"] for f in named["fields"]], named["name"]


def _built_like_samples() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(record made by the builder, the hand-written sample it must equal), per event."""
    mr = message_received()
    v2 = {k: mr.pop(k) for k in ("prepended_length", "received_sha256", "message_id_added")}
    built_mr = records.message_received(
        **{k: v for k, v in mr.items() if k != "size"},
    )
    jc = journal_copy(attempt=0, not_before=0, first_attempt_at=None, last_reply=None)
    built_jc = records.journal_copy(
        **{
            k: v
            for k, v in jc.items()
            if k not in ("attempt", "not_before", "first_attempt_at", "last_reply")
        },
    )
    built_jc["recipients"] = [records.covered_recipient(**r) for r in jc["recipients"]]
    do = delivery_outcome()
    dl = dead_letter()
    built_dl = records.dead_letter(**{k: v for k, v in dl.items() if k != "id"})
    built_dl["id"] = dl["id"]
    jr = journal_receipt()
    built_jr = records.journal_receipt(
        **{k: v for k, v in jr.items() if k not in ("directions", "client", "copies")},
        client=records.receipt_client(**jr["client"]),
        copies=[records.receipt_copy(**c) for c in jr["copies"]],
    )
    cp = journal_checkpoint()
    built_cp = records.journal_checkpoint(
        **{k: v for k, v in cp.items() if k != "heads"},
        heads=[records.checkpoint_head(**h) for h in cp["heads"]],
    )
    pc = policy_change()
    return {
        events.JOURNAL_RECEIPT: (dict(built_jr), jr),
        events.JOURNAL_CHECKPOINT: (dict(built_cp), cp),
        events.POLICY_CHANGE: (dict(records.policy_change(**pc)), pc),
        events.MESSAGE_RECEIVED: ({**built_mr, **v2}, {**mr, **v2}),
        events.JOURNAL_COPY: (dict(built_jc), jc),
        events.DELIVERY_OUTCOME: (dict(records.delivery_outcome(**do)), do),
        events.DEAD_LETTER: (dict(built_dl), dl),
    }


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_record_builders_write_every_field_and_the_same_bytes(name: str) -> None:
    built, sample = _built_like_samples()[name]
    assert set(built) == set(typing.get_type_hints(getattr(events, name)))
    assert built == sample
    assert codec.encode(name, built) == codec.encode(name, sample)
    # enum fields are plain strings, as decoded
    assert all(type(built[f]) is str for f in ("kind", "status", "format") if f in built)


def test_record_builder_nested_records_and_defaults() -> None:
    assert records.client_info("192.0.2.1", 25, "helo") == {
        "ip": "192.0.2.1",
        "port": 25,
        "helo": "helo",
        "proxied_by": None,
    }
    assert records.mail_params() == {
        "size": None,
        "body": None,
        "smtputf8": False,
        "ret": None,
        "envid": None,
        "other": {},
    }
    assert records.recipient("a@corp.example") == {
        "address": "a@corp.example",
        "notify": None,
        "orcpt": None,
        "other": {},
    }
    assert records.covered_recipient("a@corp.example") == {
        "address": "a@corp.example",
        "type": "RECIPIENT",
        "expanded": None,
        "forwarded": None,
    }
    envelope = records.relay_envelope(records.mail_params(), [], "outbound")
    assert envelope["delay_notified"] is False
    letter = records.dead_letter(
        reason="r", source_topic="t", partition=0, offset=1, key=None, value=b"", headers={}
    )
    assert letter["at"] > 0 and len(letter["id"]) == 26


def test_selected_header_fields_are_the_record_keys() -> None:
    from ingest.headers import FIELDS, selected_headers

    assert sorted(FIELDS.values()) == sorted(typing.get_type_hints(events.SelectedHeaders))
    assert list(selected_headers(b"Subject: x\r\n\r\n")) == list(
        typing.get_type_hints(events.SelectedHeaders)
    )


def test_to_millis_of_every_timestamp_form() -> None:
    assert events.to_millis(NOW) == 1741964966535
    assert events.to_millis(NOW.replace(tzinfo=None)) == 1741964966535  # naive: UTC
    assert events.to_millis(1741964966535) == 1741964966535
    assert events.to_millis(None) == 0
    # exact where int(dt.timestamp() * 1000) is one short (2004, 2039, 1970)
    for ms in (1079337347472, 2183226373411, 2105981513):
        assert int(events.from_millis(ms).timestamp() * 1000) == ms - 1
        assert events.to_millis(events.from_millis(ms)) == ms


def test_fingerprint_matches_avro_spec() -> None:
    # Fingerprint of the schema "null" from the Avro specification's test vectors.
    assert fingerprint64("null") == (7195948357588979594).to_bytes(8, "little")
    assert fingerprint64({"type": "string"}) == fingerprint64("string")
    for name in codec.names():
        entry = codec.default_codec().entry(name)
        assert codec.encode(name, SAMPLES[name]())[:10] == MAGIC + fingerprint64(entry.source)


# -------------------------------------------------------------------------------------------------
# Compatibility across every kept version (fastavro schema resolution)


def sample_datum(schema: Any, named: dict[str, Any], rng: random.Random, nulls: bool) -> Any:
    """A valid datum for any parsed schema, so old versions need no hand-written samples."""
    if isinstance(schema, str):
        if schema in named:
            return sample_datum(named[schema], named, rng, nulls)
        return {
            "null": None,
            "boolean": rng.random() < 0.5,
            "int": rng.randint(-(2**31), 2**31 - 1),
            "long": rng.randint(-(2**63), 2**63 - 1),
            "float": 1.5,
            "double": rng.random(),
            "bytes": rng.randbytes(rng.randint(0, 64)),
            "string": "s-ä-" + str(rng.randint(0, 10**6)),
        }[schema]
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"] if not nulls else schema
        return sample_datum(branches[0] if nulls else rng.choice(branches), named, rng, nulls)
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        return NOW + timedelta(milliseconds=rng.randint(0, 10**9))
    if kind == "record":
        return {f["name"]: sample_datum(f["type"], named, rng, nulls) for f in schema["fields"]}
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [sample_datum(schema["items"], named, rng, nulls) for _ in range(rng.randint(0, 3))]
    if kind == "map":
        return {f"k{i}": sample_datum(schema["values"], named, rng, nulls) for i in range(2)}
    if kind == "fixed":
        return rng.randbytes(schema["size"])
    return sample_datum(kind, named, rng, nulls)


def write_body_plain(schema: dict[str, Any], datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


def read_body(data: bytes, writer: dict[str, Any], reader: dict[str, Any]) -> Any:
    fo = io.BytesIO(data)
    record = fastavro.schemaless_reader(fo, writer, reader)
    assert fo.tell() == len(data)
    return record


def assert_resolved(
    decoded: dict[str, Any], written: dict[str, Any], writer: dict, reader: dict
) -> None:
    """Fields both versions have, with the same canonical type, keep their values."""
    writer_fields = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        other = writer_fields.get(field["name"])
        if other is None:
            assert field["name"] in decoded  # filled from the reader's default
        elif json.dumps(field["type"], sort_keys=True) == json.dumps(other["type"], sort_keys=True):
            assert decoded[field["name"]] == written[field["name"]], field["name"]


def kept_versions() -> list[tuple[str, int]]:
    return [(n, v) for n in codec.names() for v, _ in codec.schema_versions(n)]


@pytest.mark.parametrize(("name", "version"), kept_versions(), ids=lambda x: str(x))
@pytest.mark.parametrize("nulls", [False, True], ids=["values", "nulls"])
def test_every_kept_version_is_compatible_both_ways(name: str, version: int, nulls: bool) -> None:
    default = codec.default_codec()
    old = default.entry(name, version)
    current = default.entry(name)
    rng = random.Random(f"{name}{version}{nulls}")

    # Backward: what version N wrote, the current reader reads -- via the codec's fingerprint
    # lookup, exactly as a consumer sees it.
    for _ in range(5):
        datum = sample_datum(old.schema, old.schema["__named_schemas"], rng, nulls)
        data = old.header + write_body_plain(old.schema, datum)
        decoded = codec.decode(data, expected=name)
        assert_resolved(decoded, datum, old.schema, current.schema)

    # Forward: what the current writer writes, a reader still on version N reads.
    for _ in range(5):
        datum = sample_datum(current.schema, current.schema["__named_schemas"], rng, nulls)
        decoded = read_body(write_body_plain(current.schema, datum), current.schema, old.schema)
        assert_resolved(decoded, datum, current.schema, old.schema)

    # The hand-written sample (what the stages produce) too.
    body = codec.encode(name, SAMPLES[name]())[codec.HEADER_SIZE :]
    read_body(body, current.schema, old.schema)


OUTCOME_N = codec.default_codec().latest(events.DELIVERY_OUTCOME).version


def make_synthetic_v2(tmp_path: Path) -> Path:
    """A copy of the packaged schemas plus DeliveryOutcome v2: one added field with a default,
    and a new OutcomeStatus symbol (EXPIRED) that v1 readers must map to the enum default."""
    root = tmp_path / "avro"
    shutil.copytree(AVRO_ROOT, root)
    # built on the latest packaged version N, written as N + 1 ("v2" below means N + 1)
    n = OUTCOME_N
    v2 = json.loads((root / "DeliveryOutcome" / f"v{n}.avsc").read_text(encoding="utf-8"))
    status = next(f for f in v2["fields"] if f["name"] == "status")
    status["type"]["symbols"].insert(3, "EXPIRED")
    v2["fields"].append(
        {
            "name": "smtp_session",
            "type": ["null", "string"],
            "default": None,
            "doc": "Synthetic v2 field.",
        }
    )
    (root / "DeliveryOutcome" / f"v{n + 1}.avsc").write_text(json.dumps(v2), encoding="utf-8")
    return root


def test_synthetic_v2_backward_and_forward(tmp_path: Path) -> None:
    new = Codec(make_synthetic_v2(tmp_path))
    old = codec.default_codec()
    n = OUTCOME_N
    assert [v for v, _ in new.schema_versions(events.DELIVERY_OUTCOME)] == list(range(1, n + 2))
    assert new.latest(events.DELIVERY_OUTCOME).version == n + 1

    # Backward: a v1 record (from an old producer) decodes with the v2 reader; the added field
    # takes its default.
    v1_record = delivery_outcome()
    decoded = new.decode(old.encode(events.DELIVERY_OUTCOME, v1_record))
    assert decoded == {**v1_record, "smtp_session": None}

    # Forward: a v2 record with the new symbol, read by a v1 reader: EXPIRED falls back to the
    # enum default, the added field is skipped.
    v2_record = delivery_outcome(status="EXPIRED", smtp_session="s-1")
    data = new.encode(events.DELIVERY_OUTCOME, v2_record)
    assert new.decode(data) == v2_record
    v1_schema = new.entry(events.DELIVERY_OUTCOME, n).schema
    v2_schema = new.entry(events.DELIVERY_OUTCOME, n + 1).schema
    forward = read_body(data[codec.HEADER_SIZE :], v2_schema, v1_schema)
    assert forward == {**delivery_outcome(), "status": events.OutcomeStatus.UNKNOWN}

    # A build that does not carry v2 cannot look the fingerprint up: a clear error, not garbage.
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint"):
        old.decode(data)

    # Rolling upgrade: ship v2 but keep writing v1 until every reader has v2.
    pinned = Codec(make_synthetic_v2(tmp_path / "pinned"), {events.DELIVERY_OUTCOME: n})
    assert pinned.writer_entry(events.DELIVERY_OUTCOME).version == n
    data = pinned.encode(events.DELIVERY_OUTCOME, {**v1_record, "smtp_session": "dropped"})
    assert old.decode(data) == v1_record
    assert pinned.decode(data) == {**v1_record, "smtp_session": None}


def test_codec_refuses_malformed_schema_directories(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="not found"):
        Codec(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="no schemas"):
        Codec(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(AVRO_ROOT, bad)
    shutil.copy(bad / "DeadLetter" / "v1.avsc", bad / "DeadLetter" / "latest.avsc")
    with pytest.raises(SchemaError, match=r"v<N>\.avsc"):
        Codec(bad)
    misnamed = tmp_path / "misnamed"
    shutil.copytree(AVRO_ROOT, misnamed)
    shutil.copy(misnamed / "DeadLetter" / "v1.avsc", misnamed / "JournalCopy" / "v2.avsc")
    with pytest.raises(SchemaError, match="record is named"):
        Codec(misnamed)


# -------------------------------------------------------------------------------------------------
# Undecodable input: always SchemaError, never a crash or a wrong record


def test_unknown_fingerprint() -> None:
    data = bytearray(codec.encode(events.DEAD_LETTER, dead_letter()))
    data[2:10] = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    with pytest.raises(SchemaError, match=r"unknown writer schema fingerprint 0102030405060708"):
        codec.decode(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3",
        b"\xc3\x01\x00",
        b"\x00\x00\x00\x00\x01" + b"x" * 20,  # Confluent framing, not ours
        b"Obj\x01" + b"x" * 20,  # Avro container file
        b'{"event_id": "x"}',
    ],
)
def test_wrong_magic_or_too_short(data: bytes) -> None:
    with pytest.raises(SchemaError, match="not an Avro single-object record"):
        codec.decode(data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncated_at_every_length(name: str) -> None:
    data = codec.encode(name, SAMPLES[name]())
    for cut in range(len(data)):
        with pytest.raises(SchemaError):
            codec.decode(data[:cut])


def test_truncated_large_record() -> None:
    data = codec.encode(events.MESSAGE_RECEIVED, message_received(raw=b"x" * 1_000_000))
    for cut in (codec.HEADER_SIZE, 500, len(data) // 2, len(data) - 1):
        with pytest.raises(SchemaError, match="truncated or corrupt"):
            codec.decode(data[:cut])


def test_trailing_bytes() -> None:
    data = codec.encode(events.DEAD_LETTER, dead_letter())
    with pytest.raises(SchemaError, match="unexpected bytes after the end"):
        codec.decode(data + b"\x00")


def test_expected_schema_mismatch() -> None:
    data = codec.encode(events.DELIVERY_OUTCOME, delivery_outcome())
    with pytest.raises(SchemaError, match="expected a JournalCopy record, got DeliveryOutcome"):
        codec.decode(data, expected=events.JOURNAL_COPY)
    assert codec.peek(data) == (events.DELIVERY_OUTCOME, OUTCOME_N)


def test_random_corruption_raises_only_schema_error() -> None:
    rng = random.Random(1)
    original = codec.encode(events.JOURNAL_COPY, journal_copy(original=b"body"))
    for _ in range(3000):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(codec.HEADER_SIZE, len(data))] = rng.randrange(256)
        with contextlib.suppress(SchemaError):
            codec.decode(bytes(data))


def test_schema_error_is_a_value_error() -> None:
    assert issubclass(SchemaError, ValueError)
    assert schemas.SchemaError is SchemaError


# -------------------------------------------------------------------------------------------------
# Ids


def test_event_ids_are_unique_and_sorted_by_time() -> None:
    before = events.now_millis()
    ids = [events.new_event_id() for _ in range(100_000)]
    after = events.now_millis()
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 and re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids[::997])
    stamps = [events.event_id_millis(i) for i in ids]
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)


def test_event_ids_across_milliseconds_sort_by_time() -> None:
    first = events.new_event_id()
    later = events.event_id_millis(first) + 3
    wait_until(lambda: events.now_millis() >= later, 5, "the clock to pass 2 ms")
    second = events.new_event_id()
    assert first < second
    assert events.event_id_millis(second) - events.event_id_millis(first) >= 2
    assert abs(events.event_id_datetime(second) - datetime.now(UTC)) < timedelta(seconds=5)


def test_event_ids_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(events.new_event_id() for _ in range(10_000))

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = [i for r in results for i in r]
    assert len(set(merged)) == len(merged)
    assert all(r == sorted(r) for r in results)


def test_event_id_millis_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        events.event_id_millis("short")
    with pytest.raises(ValueError):
        events.event_id_millis("U" * 26)  # U is not in Crockford base32


def test_copy_ids_are_deterministic() -> None:
    event_id = events.new_event_id()
    a = events.make_copy_id(event_id, "Journal-In@Corp.Example")
    assert a == events.make_copy_id(event_id, "journal-in@corp.example")
    assert a != events.make_copy_id(event_id, "journal-out@corp.example")
    assert a.startswith(event_id)
    assert events.make_ndr_copy_id(a) != a


def test_samples_are_not_mutated_by_encoding() -> None:
    record = journal_copy()
    snapshot = copy.deepcopy(record)
    codec.encode(events.JOURNAL_COPY, record)
    assert record == snapshot


def test_write_version_pins_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(codec.WRITE_VERSIONS_ENV, " JournalCopy=1 , DeliveryOutcome=1")
    assert codec._write_versions_from_env() == {"JournalCopy": 1, "DeliveryOutcome": 1}
    monkeypatch.setenv(codec.WRITE_VERSIONS_ENV, "JournalCopy")
    with pytest.raises(SchemaError, match="Name=version"):
        codec._write_versions_from_env()
    with pytest.raises(SchemaError, match="no kept version 9"):
        Codec(write_versions={"JournalCopy": 9})
