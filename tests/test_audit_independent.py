"""The audit's independent check and its gaps for unreadable records (pure, no Kafka).

The check re-derives from the envelope and the client's trust which global copies a message
requires; these tests give it events the journal worker's decision logic gets wrong or cannot
read, and show the audit does not agree with it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from audit.reconcile import Reconciler, required_globals
from tests.fixtures.config import make_config

NOW = 10_000_000
GRACE = 60_000
EXPIRY = 3_600_000
CONFIG = make_config(
    {
        "journal": {
            "internal": {
                "enabled": True,
                "address": "ji@corp.example",
                "ndr_address": "jn@corp.example",
            }
        }
    }
)
IN, OUT, INT = (
    ("INBOUND", "journal-in@corp.example"),
    ("OUTBOUND", "journal-out@corp.example"),
    ("INTERNAL", "ji@corp.example"),
)
TRUSTED = {"ip": "10.1.2.3", "port": 1, "helo": "x", "proxied_by": None}
OUTSIDE = {"ip": "203.0.113.9", "port": 1, "helo": "x", "proxied_by": None}


def event(client: dict[str, Any], mail_from: str, *rcpts: str, **over: Any) -> dict[str, Any]:
    return {
        "event_id": "e1",
        "received_at": datetime(2025, 1, 1, tzinfo=UTC),
        "listener_role": "internet",
        "client": client,
        "auth_user": None,
        "mail_from": mail_from,
        "recipients": [{"address": r} for r in rcpts],
        # hostile header fields: the check reads none of them
        "headers": {"to": "(" * 5000, "cc": None, "subject": "\ud800", "journal_stamp": None},
        "raw": b"",
        **over,
    }


@pytest.mark.parametrize(
    ("ev", "required"),
    [
        # trusted or authenticated submitter, external recipient: outbound whatever MAIL FROM
        (event(TRUSTED, "", "x@ext.example"), {OUT}),
        (event(TRUSTED, "spoof@ext.example", "x@ext.example"), {OUT}),
        (event(OUTSIDE, "a@ext.example", "x@ext.example", auth_user="alice"), {OUT}),
        (event(OUTSIDE, "a@ext.example", "x@ext.example", listener_role="relay"), {OUT}),
        # internal recipients from a trusted client: internal / inbound by the sender
        (event(TRUSTED, "carol@corp.example", "bob@corp.example"), {INT}),
        (event(TRUSTED, "partner@ext.example", "bob@corp.example"), {IN}),
        (event(TRUSTED, "", "bob@corp.example"), {IN}),  # null sender, no stamp: inbound
        # untrusted: internal recipient inbound whatever MAIL FROM; external one fail safe
        (event(OUTSIDE, "ceo@corp.example", "bob@corp.example"), {IN}),
        (event(OUTSIDE, "a@ext.example", "x@ext.example"), {OUT}),
        # journal and NDR addresses are never journaled
        (event(OUTSIDE, "a@ext.example", "journal-in@corp.example", "JN@corp.example"), set()),
        (event(TRUSTED, "carol@corp.example", "bob@corp.example", "x@ext.example"), {INT, OUT}),
    ],
)
def test_required_globals_follow_the_direction_rule(
    ev: dict[str, Any], required: set[tuple[str, str]]
) -> None:
    assert required_globals(ev, CONFIG) == required


def test_a_disabled_direction_requires_nothing() -> None:
    cfg = make_config({"journal": {"outbound": {"enabled": False}}})
    assert required_globals(event(TRUSTED, "", "x@ext.example"), cfg) == set()


def test_a_verified_stamp_exempts_only_its_own_destination() -> None:
    from tests.fixtures.stamp import stamped, valid_stamp, with_stamp

    base = event(TRUSTED, "", "bob@corp.example", "carol@corp.example")
    base["raw"] = b"From: x@corp.example\r\nSubject: r\r\n\r\nreport body\r\n"
    # a real stamp for bob exempts bob only: carol still owes the inbound copy
    assert required_globals(stamped(base, "bob@corp.example"), CONFIG) == {IN}
    only_bob = {**base, "recipients": [{"address": "bob@corp.example"}]}
    assert required_globals(stamped(only_bob, "bob@corp.example"), CONFIG) == set()
    # forged (another key), expired, or for another destination: no exemption
    forged = with_stamp(only_bob, valid_stamp(only_bob, "bob@corp.example", key=bytes(range(32))))
    expired = stamped(only_bob, "bob@corp.example", age_ms=8 * 86_400_000)
    elsewhere = stamped(only_bob, "alice@corp.example")
    for ev in (forged, expired, elsewhere):
        assert required_globals(ev, CONFIG) == {IN}


def report(rec: Reconciler):  # type: ignore[no-untyped-def]
    return rec.report(NOW, GRACE, EXPIRY)


def test_a_required_global_copy_never_emitted_is_a_gap_even_when_nothing_is_owed() -> None:
    # the decision logic (wrongly) owes nothing: the independent check still names the gap
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, [], {OUT})
    rec.add_message("e2", NOW - 1_000, [], {OUT})  # within the grace period: pending
    r = report(rec)
    assert [(g.kind, g.event_id) for g in r.gaps] == [("global-missing", "e1")]
    assert "journal-out@corp.example" in r.gaps[0].line()


def test_a_copy_to_another_address_or_direction_does_not_satisfy_the_check() -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1", "c2"], {OUT})
    rec.add_copy("c1", "e1", "JOURNAL", "supervisor@corp.example", ["OUTBOUND"])
    rec.add_copy("c2", "e1", "JOURNAL", "journal-out@corp.example", ["INBOUND"])
    for c in ("c1", "c2"):
        rec.add_outcome(c, "e1", "JOURNAL", "DELIVERED", NOW - 100_000, None)
    assert [g.kind for g in report(rec).gaps] == ["global-missing"]


@pytest.mark.parametrize(
    ("status", "gap"),
    [("DELIVERED", None), ("NDR_SENT", "ndr-pending"), ("DEAD_LETTERED", "global-undelivered")],
)
def test_the_global_copy_must_be_delivered_or_ndrd(status: str, gap: str | None) -> None:
    rec = Reconciler()
    rec.add_message("e1", NOW - 120_000, ["c1"], {OUT})
    rec.add_copy("c1", "e1", "JOURNAL", "Journal-Out@CORP.example", ["OUTBOUND", "INBOUND"])
    rec.add_outcome(
        "c1", "e1", "JOURNAL", status, NOW - 100_000, "c1.ndr" if status == "NDR_SENT" else None
    )
    assert [g.kind for g in report(rec).gaps] == ([gap] if gap else [])


def test_an_unreadable_record_is_a_named_gap() -> None:
    rec = Reconciler()
    rec.add_unreadable("mj.messages[2]@17", "not a readable MessageReceived: SchemaError: x")
    r = report(rec)
    assert r.has_gaps()
    (gap,) = r.gaps
    assert gap.kind == "unreadable"
    assert gap.line() == (
        "GAP unreadable: unreadable record mj.messages[2]@17: "
        "not a readable MessageReceived: SchemaError: x"
    )
    assert "gaps: 1" in r.render()
