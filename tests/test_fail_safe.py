"""Fail safe, never fail open (issue 13): no exception in header parsing, deciding, rendering or
building removes or blocks a journal copy. Pure functions, no I/O."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any

import pytest

from delivery import report as report_module
from delivery.ndr import build_ndr
from delivery.report import build_message, build_report
from journal_worker.decide import Decider, decide, fallback_decision, recipient_types
from mailjournal import mime
from mailjournal.dsn import Failure
from mailjournal.mime import clean_text, fold_header, safe_ascii
from relay.sender_dsn import RecipientFailure, build_sender_dsn
from schemas.events import Direction, JournalSource, RecipientType
from tests.fixtures.config import make_config

CONFIG = make_config()
# To: fields that make email.utils.getaddresses raise RecursionError
RECURSIVE_TO = "(" * 5000 + "alice@corp.example"
# all-ASCII encoded words that decode to a lone surrogate (UTF-7, unicode-escape)
SURROGATE_SUBJECTS = [
    "=?utf-7?b?" + base64.b64encode(b"+2AA-").decode() + "?=",
    "=?unicode-escape?b?" + base64.b64encode(b"\\ud800").decode() + "?=",
    "=?utf-7?q?+2AA-?= and more",
]


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "01J0FAILSAFE",
        "received_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "listener_role": "internet",
        "client": {"ip": "203.0.113.5", "port": 4000, "helo": "x", "proxied_by": None},
        "auth_user": None,
        "mail_from": "eve@ext.example",
        "recipients": [{"address": "alice@corp.example"}, {"address": "bob@corp.example"}],
        "headers": {"message_id": "<m@ext>", "subject": "hi", "to": None, "cc": None},
        "raw": b"Subject: hi\r\n\r\nbody\r\n",
    }
    base.update(over)
    return base


def headers(**over: Any) -> dict[str, Any]:
    return {"message_id": "<m@ext>", "subject": "hi", "to": None, "cc": None, **over}


def test_getaddresses_really_recurses_on_the_crafted_field() -> None:
    from email.utils import getaddresses

    with pytest.raises(RecursionError):
        getaddresses([RECURSIVE_TO])


@pytest.mark.parametrize("field", ["to", "cc"])
def test_an_unparsable_to_or_cc_types_recipients_recipient_and_keeps_the_copies(
    field: str,
) -> None:
    ev = event(headers=headers(**{field: RECURSIVE_TO}))
    decision = decide(ev, CONFIG, {}, None)
    assert decision.fallback is None
    assert [c.journal_address for c in decision.copies] == ["journal-in@corp.example"]
    (copy,) = decision.copies
    assert {r.type for r in copy.recipients} == {RecipientType.RECIPIENT}
    assert [r.address for r in copy.recipients] == ["alice@corp.example", "bob@corp.example"]
    assert decision.header_errors == (f"{field}: RecursionError",)


def test_a_readable_to_still_types_when_cc_is_unparsable() -> None:
    ev = event(headers=headers(to="alice@corp.example", cc=RECURSIVE_TO))
    types = recipient_types(ev, ["alice@corp.example", "bob@corp.example"], True, errors := [])
    assert types == {
        "alice@corp.example": RecipientType.TO,
        "bob@corp.example": RecipientType.RECIPIENT,
    }
    assert errors == ["cc: RecursionError"]


def test_the_fallback_owes_the_global_copies_of_the_envelope_directions() -> None:
    cfg = make_config(
        {
            "journal": {
                "internal": {
                    "enabled": True,
                    "address": "ji@corp.example",
                    "ndr_address": "jin@corp.example",
                }
            }
        }
    )
    ev = event(
        client={"ip": "10.1.2.3", "port": 1, "helo": "x", "proxied_by": None},
        mail_from="carol@corp.example",
        recipients=[
            {"address": "alice@corp.example"},
            {"address": "dave@ext.example"},
            {"address": "journal-in@corp.example"},  # protected: never journaled
        ],
    )
    decision = fallback_decision(ev, cfg, "deciding raised RecursionError()")
    assert decision.fallback == "deciding raised RecursionError()"
    by_address = {c.journal_address: c for c in decision.copies}
    assert set(by_address) == {"journal-out@corp.example", "ji@corp.example"}
    assert by_address["journal-out@corp.example"].directions == (Direction.OUTBOUND,)
    assert [r.address for r in by_address["journal-out@corp.example"].recipients] == [
        "dave@ext.example"
    ]
    assert by_address["ji@corp.example"].directions == (Direction.INTERNAL,)
    assert all(c.sources == (JournalSource.GLOBAL,) for c in decision.copies)
    assert decision.protected_recipients == ("journal-in@corp.example",)


@pytest.mark.parametrize(
    ("client_ip", "mail_from", "rcpt", "owed"),
    [
        ("10.1.2.3", "", "ext@ext.example", "journal-out@corp.example"),  # trusted, null sender
        ("10.1.2.3", "x@ext.example", "ext@ext.example", "journal-out@corp.example"),
        ("10.1.2.3", "", "alice@corp.example", "journal-in@corp.example"),
        ("10.1.2.3", "x@ext.example", "alice@corp.example", "journal-in@corp.example"),
        ("203.0.113.5", "boss@corp.example", "alice@corp.example", "journal-in@corp.example"),
        ("203.0.113.5", "x@ext.example", "ext@ext.example", "journal-out@corp.example"),
    ],
)
def test_the_fallback_follows_the_direction_rule(
    client_ip: str, mail_from: str, rcpt: str, owed: str
) -> None:
    ev = event(
        client={"ip": client_ip, "port": 1, "helo": "x", "proxied_by": None},
        mail_from=mail_from,
        recipients=[{"address": rcpt}],
    )
    assert [c.journal_address for c in fallback_decision(ev, CONFIG, "x").copies] == [owed]


def test_the_fallback_has_the_copy_ids_of_the_full_decision() -> None:
    ev = event()
    full = decide(ev, CONFIG, {}, None)
    assert [c.copy_id for c in fallback_decision(ev, CONFIG, "x").copies] == [
        c.copy_id for c in full.copies
    ]


def test_the_fallback_survives_a_recipient_without_an_address() -> None:
    ev = event(recipients=[{"nope": 1}, {"address": "alice@corp.example"}])
    assert [c.journal_address for c in fallback_decision(ev, CONFIG, "x").copies] == [
        "journal-in@corp.example"
    ]
    with pytest.raises(KeyError):
        Decider(CONFIG, None).plan(ev)  # what made the worker fall back


# -- rendering ------------------------------------------------------------------------------------


def copy_record(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "copy_id": "01J0FAILSAFE.abc",
        "event_id": "01J0FAILSAFE",
        "kind": "JOURNAL",
        "received_at": 1_700_000_000_000,
        "directions": ["INBOUND"],
        "sources": ["GLOBAL"],
        "journal_address": "journal-in@corp.example",
        "ndr_address": "journal-ndr-in@corp.example",
        "format": "REPORT",
        "original_sender": "eve@ext.example",
        "recipients": [{"address": "alice@corp.example", "type": "TO"}],
        "message_id": "<m@ext>",
        "subject": "hi",
        "original": b"Subject: x\r\n\r\nbody\r\n",
        "about_copy_id": None,
    }
    base.update(over)
    return base


def test_clean_text_escapes_lone_surrogates() -> None:
    assert clean_text("a\ud800b") == "a\\ud800b"
    assert clean_text("a\udcffb\ud800") == "a\\udcffb\\ud800"  # mixed: nothing to re-read
    assert clean_text("caf\udcc3\udca9") == "café"  # undecodable UTF-8 bytes re-read
    assert safe_ascii("é\ud800\r\nx") == "\\xe9\\ud800 x"


@pytest.mark.parametrize("subject", SURROGATE_SUBJECTS)
def test_a_subject_decoding_to_a_lone_surrogate_builds_report_ndr_and_dsn(subject: str) -> None:
    copy = copy_record(subject=subject)
    data = build_report(copy, CONFIG)
    assert data.endswith(
        b"\r\n"
        + copy["original"]
        + b"\r\n--"
        + data.split(b'boundary="')[1].split(b'"')[0]
        + b"--\r\n"
    )
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["X-MS-Journal-Report"] is not None
    text = msg.get_payload()[0].get_content()
    assert "Subject: " in text and "alice@corp.example" in text
    failure = Failure("550 5.1.1 no", True, False, 1, 1_700_000_000_000)
    ndr = build_ndr(copy, data, failure, CONFIG, now_ms=1_700_000_000_000)
    assert b"report-type=delivery-status" in ndr and data in ndr
    relay = copy_record(subject=subject, kind="RELAY", relay={"mail_params": {}})
    dsn = build_sender_dsn(
        relay,
        [RecipientFailure({"address": "alice@corp.example"}, failure)],
        "failed",
        CONFIG,
        now_ms=1_700_000_000_000,
        dsn_id="dsn1",
    )
    assert b"report-type=delivery-status" in dsn


def test_fold_header_falls_back_to_escaped_ascii_when_the_library_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: Any, **__: Any) -> bytes:
        raise RecursionError("a library bug")

    monkeypatch.setattr(mime, "_fold_header", broken)
    folded = fold_header("Subject", "caf\u00e9 \ud800")
    assert folded.startswith(b"Subject: =?utf-8?")
    decoded = str(policy.default.header_factory("subject", folded[9:].decode().strip()))
    assert decoded == "caf\\xe9 \\ud800"


def test_a_report_that_cannot_build_goes_out_as_the_unchanged_original(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: Any, **__: Any) -> bytes:
        raise MemoryError

    # report_parts builds what delivery sends (build_report joins its parts)
    monkeypatch.setattr(report_module, "report_parts", broken)
    copy = copy_record()
    assert build_message(copy, CONFIG) == copy["original"]
    assert (
        report_module.outgoing_message(copy, CONFIG).payload() == b"Subject: x\r\n\r\nbody\r\n.\r\n"
    )


def test_an_ndr_that_cannot_build_is_sent_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = mime.decode_header_text

    def breaks_on_the_subject(raw: Any) -> str:
        calls.append(raw)
        if raw == "boom":
            raise RecursionError
        return real(raw)

    import delivery.ndr as ndr_module

    # the rendered field has its own fallback; a failure past it (here the whole text part)
    # falls back to the minimal NDR
    monkeypatch.setattr(
        ndr_module, "human_text", lambda copy, *a: [breaks_on_the_subject(copy.get("subject"))]
    )
    copy = copy_record(subject="boom")
    failure = Failure("550 5.1.1 \ud800 no", True, False, 1, 1_700_000_000_000)
    ndr = build_ndr(copy, b"sent", failure, CONFIG, now_ms=1_700_000_000_000)
    assert b"Subject: Undeliverable journal report\r\n" in ndr
    assert b"\\ud800" in ndr
    assert calls == ["boom", None]
