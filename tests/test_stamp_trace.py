"""The loop-guard stamp (mailjournal/stamp.py) and ingest's prepended fields (mailjournal/trace.py):
pure functions, no servers."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.headers import selected_headers
from mailjournal.config import StampKeyError
from mailjournal.mime import rfc5322_date
from mailjournal.stamp import (
    HEADER,
    PLACEHOLDER,
    body_of,
    create_key,
    make_stamp,
    parse_stamp,
    read_key,
    stamp_message,
    verify_stamp,
)
from mailjournal.trace import as_received, received_field, traced
from tests.fixtures.config import PREVIOUS_STAMP_KEY, STAMP_KEY, make_config, write_key
from tests.fixtures.journal import make_event
from tests.fixtures.trace import assert_event_of

T = 1_760_000_000_000  # when the stamp is made
DEST = "journal-in@corp.example"
MESSAGE = f"From: a@b\r\n{HEADER}: {PLACEHOLDER}\r\nSubject: s\r\n\r\nbody\r\n".encode()


def sealed(message: bytes = MESSAGE, key: bytes = STAMP_KEY, dest: str = DEST) -> bytes:
    return stamp_message(message, copy_id="c1", destination=dest, created_ms=T, key=key)


def value_of(message: bytes) -> str:
    value = selected_headers(message)["journal_stamp"]
    assert value is not None
    return value


def verify(message: bytes, value: str | None = None, **kw: object) -> object:
    args: dict[str, object] = {"received_ms": T + 60_000, **kw}
    keys = args.pop("keys", (STAMP_KEY,))
    return verify_stamp(value or value_of(message), message, keys, **args)  # type: ignore[arg-type]


def test_a_stamp_verifies_on_its_own_message_and_names_its_destination() -> None:
    message = sealed()
    stamp = verify(message)
    assert stamp is not None
    assert (stamp.copy_id, stamp.destination, stamp.created_ms) == ("c1", DEST, T)  # type: ignore[attr-defined]
    # in place of the placeholder, the body untouched
    assert message.count(HEADER.encode()) == 1 and PLACEHOLDER.encode() not in message
    assert body_of(message) == body_of(MESSAGE) == b"body\r\n"
    assert message.index(HEADER.encode()) == MESSAGE.index(HEADER.encode())
    # fields prepended later (ingest's Received:) leave the body, so the stamp, valid
    assert verify(b"Received: from x\r\n\tby y; date\r\n" + message) is not None


def test_a_message_without_placeholder_gets_the_stamp_first() -> None:
    message = sealed(b"Subject: s\r\n\r\nbody\r\n")
    assert message.startswith(HEADER.encode() + b": v2; ")
    assert verify(message) is not None


@pytest.mark.parametrize(
    "tamper",
    [
        "another body (lifted onto another message)",
        "another destination named",
        "another creation time",
        "another copy id",
        "no mac",
        "another key",
        "version 1",
        "expired",
        "from the future",
        "no key at all",
    ],
)
def test_a_stamp_tampered_with_is_not_honoured(tamper: str) -> None:
    message = sealed()
    value = value_of(message)
    fields = parse_stamp(value)
    kw: dict[str, object] = {}
    if tamper.startswith("another body"):
        message = message.replace(b"body\r\n", b"other body\r\n")
    elif tamper.startswith("another destination"):
        value = value.replace(f"to={DEST}", "to=attacker@corp.example")
    elif tamper == "another creation time":
        value = value.replace(f"t={T}", f"t={T + 1}")
    elif tamper == "another copy id":
        value = value.replace("copy=c1", "copy=c2")
    elif tamper == "no mac":
        value = value.split("; mac=")[0]
    elif tamper == "another key":
        value = make_stamp("c1", DEST, T, body_of(message), PREVIOUS_STAMP_KEY)
    elif tamper == "version 1":
        value = f"v1; copy=c1; mac={fields['mac'][:32]}"
    elif tamper == "expired":
        kw["received_ms"] = T + 7 * 86400_000 + 1
    elif tamper == "from the future":
        kw["received_ms"] = T - 2 * 3600_000
    else:
        kw["keys"] = ()
    assert verify(message, value, **kw) is None


def test_the_previous_key_verifies_and_the_max_age_is_configurable() -> None:
    old = sealed(key=PREVIOUS_STAMP_KEY)
    assert verify(old) is None
    assert verify(old, keys=(STAMP_KEY, PREVIOUS_STAMP_KEY)) is not None
    assert verify(sealed(), received_ms=T + 3600_000, max_age_seconds=3599) is None
    assert verify(sealed(), received_ms=T + 3600_000, max_age_seconds=3600) is not None


@pytest.mark.parametrize(
    ("material", "problem"),
    [
        (b"", "0 bytes of key material, at least 32 required"),
        (b"x" * 31, "31 bytes of key material"),
        (b"\n" * 64, "not random key material"),
    ],
)
def test_too_little_key_material_is_refused_naming_the_file(
    tmp_path: Path, material: bytes, problem: str
) -> None:
    path = write_key(tmp_path / "k", material)
    with pytest.raises(StampKeyError, match=problem) as err:
        read_key(path)
    assert str(path) in str(err.value)
    with pytest.raises(StampKeyError, match=r"journal\.stamp_secret_file"):
        make_config({"journal": {"stamp_secret_file": str(path)}}).journal.stamp_key()
    with pytest.raises(StampKeyError):
        make_stamp("c1", DEST, T, b"", material)


def test_a_key_is_used_byte_for_byte(tmp_path: Path) -> None:
    # a random key may begin or end with white space: stripping it would change the key
    material = b"\n" + STAMP_KEY + b" "
    assert read_key(write_key(tmp_path / "k", material)) == material


def test_create_key_writes_32_random_owner_only_bytes_once(tmp_path: Path) -> None:
    path = tmp_path / "run" / "stamp.key"
    assert create_key(path)
    first = path.read_bytes()
    assert len(first) == 32 and read_key(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not create_key(path)  # never overwrites a key in use
    assert path.read_bytes() == first


def test_journaling_needs_a_key_and_the_config_names_it() -> None:
    from mailjournal.config import file_problems

    config = make_config({"journal": {"stamp_secret_file": None}})
    problems = file_problems(config, ["journal"])
    assert any(p.startswith("journal.stamp_secret_file: required") for p in problems)
    assert file_problems(config, ["ingest"]) == []  # ingest neither makes nor honours stamps
    assert config.journal.stamp_key() is None
    off = make_config(
        {
            "journal": {
                "stamp_secret_file": None,
                "inbound": {"enabled": False},
                "outbound": {"enabled": False},
            }
        }
    )
    assert file_problems(off, ["journal", "deliver"]) == []


# -- ingest's prepended fields ------------------------------------------------------------------


def event_for(raw: bytes, recipients: list[str] | None = None) -> dict[str, object]:
    event = make_event("a@ext.example", recipients or ["bob@corp.example"])
    event.update(
        raw=raw,
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        headers=selected_headers(raw),
        received_at=T,
        tls={"version": "TLSv1.3", "cipher": "x"},
    )
    return event


def test_received_field_is_rfc5321_trace_of_the_transaction() -> None:
    event = event_for(b"Subject: s\r\n\r\nx\r\n")
    assert (
        received_field(event, "mx.corp.example")
        == (
            f"Received: from client.test ([203.0.113.5])\r\n\tby mx.corp.example (mailjournal) "
            f"with ESMTPS id {event['event_id']}\r\n\tfor <bob@corp.example>;\r\n"
            f"\tThu, 09 Oct 2025 08:53:20 +0000\r\n"
        ).encode()
    )
    event.update(auth_user="alice", tls=None, recipients=[*event["recipients"]] * 2)  # type: ignore[list-item]
    field = received_field(event, "mx.corp.example")
    assert b"with ESMTPA id" in field and b"for <" not in field


def test_received_field_keeps_client_text_on_its_line_and_ascii() -> None:
    event = event_for(b"\r\n", ["zoë@corp.example"])
    event["client"] = {"ip": "1.2.3.4", "helo": "evil\r\nBcc: x@y\x00ü", "port": 1}
    field = received_field(event, "mx.corp.example")
    assert field.isascii()
    assert b"from evilBcc: x@y? ([1.2.3.4])" in field
    assert b"for <" not in field  # a UTF-8 recipient is left out: no SMTPUTF8 needed for ours


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: no id\r\n\r\nbody\r\n",
        b"Message-ID:   \r\nSubject: empty id\r\n\r\nbody\r\n",
        b"Message-ID: <given@ext.example>\r\nSubject: s\r\n\r\nbody\r\n",
        b"",
        b"no header block at all",
    ],
)
def test_traced_prepends_our_fields_and_keeps_the_bytes_as_received(raw: bytes) -> None:
    event = event_for(raw)
    out = traced(event, "mx.corp.example")
    assert_event_of(out, raw)
    assert as_received(out) == raw
    given = b"<given@ext.example>" in raw
    assert out["message_id_added"] is not given
    mid = out["headers"]["message_id"]
    assert mid == ("<given@ext.example>" if given else f"<{event['event_id']}@mx.corp.example>")
    assert selected_headers(out["raw"])["message_id"] == mid  # the first occurrence: ours


def test_message_id_domain_falls_back_to_the_ingest_host() -> None:
    event = event_for(b"Subject: s\r\n\r\nx\r\n")
    event["ingest_host"] = "ingest-7"
    out = traced(event, "localhost")
    assert out["headers"]["message_id"] == f"<{event['event_id']}@ingest-7>"


def test_as_received_of_an_old_record_is_its_raw() -> None:
    assert as_received({"raw": b"abc"}) == b"abc"


# from 0001-01-01 to 9999-12-31, every millisecond: what our reports, NDRs and Received fields
# may be dated
@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_the_cached_date_is_the_stdlib_date_of_that_millisecond(ms: int) -> None:
    expected = format_datetime(datetime.fromtimestamp(ms / 1000, tz=UTC))
    assert rfc5322_date(ms) == expected
    assert rfc5322_date(ms) == expected  # and from the cache, for the same second
    assert received_field({"event_id": "e", "received_at": ms}, "h").endswith(
        f";\r\n\t{expected}\r\n".encode()
    )
