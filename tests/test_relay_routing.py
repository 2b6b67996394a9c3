"""Pure parts of the relay: routing per recipient, grouping per destination, MX lookup through
an injected stub resolver (no network), and which DSNs a sender is owed (RFC 3461)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import dns.resolver
import pytest

from mailjournal.dsn import Failure
from relay.mx import MxError, mx_hosts
from relay.routing import group_recipients, mail_args, rcpt_args, route_key
from relay.sender_dsn import RecipientFailure, delivery_status, wants, xtext_decode
from tests.fixtures.config import make_config

HOP = {"host": "10.0.0.5", "port": 25}
CONFIG = make_config(
    {
        "ingest": {"listeners": [{"name": "inline", "port": 0, "relay": True}]},
        "relay": {
            "inbound": HOP,
            "outbound": {"mx": True},
            "domains": {"partner.example": {"host": "10.0.0.9", "port": 2525}},
        },
    }
)


def test_route_per_recipient() -> None:
    assert route_key("bob@corp.example", CONFIG) == "inbound"
    assert route_key("x@Partner.Example", CONFIG) == "domain:partner.example"
    assert route_key("y@ext.example", CONFIG) == "outbound|mx:ext.example"


def test_one_group_per_destination_in_rcpt_order() -> None:
    rcpts = [{"address": a} for a in ("a@corp.example", "b@ext.example", "c@corp.example")]
    groups = group_recipients(rcpts, CONFIG)
    assert list(groups) == ["inbound", "outbound|mx:ext.example"]
    assert [r["address"] for r in groups["inbound"]] == ["a@corp.example", "c@corp.example"]


def test_envelope_parameters_passed_on() -> None:
    params = {"body": "8BITMIME", "smtputf8": True, "ret": "HDRS", "envid": "x+2By", "size": 9}
    assert mail_args(params) == ["BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=x+2By"]
    assert rcpt_args({"notify": ["FAILURE", "DELAY"], "orcpt": "rfc822;b@c"}) == [
        "NOTIFY=FAILURE,DELAY",
        "ORCPT=rfc822;b@c",
    ]


class StubResolver:
    def __init__(self, answers: dict[str, Any]):
        self.answers = answers

    def resolve(self, qname: str, rdtype: str, *, lifetime: float | None = None) -> Any:
        answer = self.answers[qname]
        if isinstance(answer, Exception):
            raise answer
        return [SimpleNamespace(preference=p, exchange=h) for p, h in answer]


def test_mx_by_preference_and_fallbacks() -> None:
    r = StubResolver(
        {
            "a.example": [(20, "mx2.a.example."), (10, "mx1.a.example.")],
            "noanswer.example": dns.resolver.NoAnswer(),
            "null.example": [(0, ".")],
            "gone.example": dns.resolver.NXDOMAIN(),
            "broken.example": dns.resolver.LifetimeTimeout(),
        }
    )
    assert mx_hosts("a.example", r, 1) == ["mx1.a.example", "mx2.a.example"]
    assert mx_hosts("noanswer.example", r, 1) == ["noanswer.example"]  # implicit MX
    for domain, permanent in (
        ("null.example", True),
        ("gone.example", True),
        ("broken.example", False),
    ):
        with pytest.raises(MxError) as info:
            mx_hosts(domain, r, 1)
        assert info.value.permanent is permanent


@pytest.mark.parametrize(
    ("notify", "failed", "delayed"),
    [
        (None, True, True),
        (["NEVER"], False, False),
        (["FAILURE"], True, False),
        (["DELAY"], False, True),
        (["SUCCESS"], False, False),
    ],
)
def test_notify(notify: list[str] | None, failed: bool, delayed: bool) -> None:
    rcpt = {"address": "b@corp.example", "notify": notify}
    assert (wants(rcpt, "failed"), wants(rcpt, "delayed")) == (failed, delayed)


def test_xtext() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"


def test_sender_dsn_fields_stay_under_998_octets_with_a_huge_envid_and_orcpt() -> None:
    """ENVID and ORCPT come from the client: however long, the delivery-status fields are folded
    into valid lines (RFC 3464 fields have header syntax) and keep their names."""
    config = make_config({})
    copy = {"relay": {"mail_params": {"envid": "e" * 3000}}, "received_at": 0}
    rf = RecipientFailure(
        {"address": "a@ext.example", "orcpt": "rfc822;" + "o" * 3000},
        Failure("550 5.1.1 " + "x " * 1000, True, False, 1, 0, "mx.ext.example"),
    )
    status = delivery_status(copy, [rf], "failed", config)
    lines = status.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    names = {line.split(b":", 1)[0] for line in lines if line and line[:1] not in b" \t"}
    assert {b"Original-Envelope-Id", b"Original-Recipient", b"Diagnostic-Code"} <= names
