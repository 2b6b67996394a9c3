"""Loop safety of inline mode: a message that comes back to a relay listener after too many hops
is refused (554 5.4.6) and never published, so it is never relayed again; a journaling-only
listener is not affected."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from mailjournal.trace import as_received
from relay.routing import received_header
from schemas import MESSAGE_RECEIVED, decode
from tests.fixtures.config import make_config
from tests.fixtures.ingest import RunningIngest
from tests.fixtures.journal import make_event
from tests.fixtures.kafka import consume_all

HOP = {"host": "127.0.0.1", "port": 2525}


def message(hops: int) -> bytes:
    trace = b"".join(
        f"Received: from h{i}.example ([192.0.2.{i}])\r\n\tby mx.example; "
        f"Thu, 1 Jan 2026 00:00:0{i % 10} +0000\r\n".encode()
        for i in range(hops)
    )
    return trace + b"From: a@ext.example\r\nTo: bob@corp.example\r\nSubject: loop\r\n\r\nhi\r\n"


def send(port: int, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("a@ext.example")
        smtp.rcpt("bob@corp.example")
        return smtp.data(data)


def test_loop_refused_on_relay_listener(ingest_factory: Callable[..., RunningIngest]) -> None:
    overrides: dict[str, Any] = {
        "relay": {"inbound": HOP, "outbound": HOP, "max_received_headers": 5}
    }
    listeners = [
        {"name": "inline", "host": "127.0.0.1", "port": 0, "relay": True},
        {"name": "feed", "host": "127.0.0.1", "port": 0},
    ]
    ingest = ingest_factory(overrides, listeners=listeners)
    assert send(ingest.port("inline"), message(5))[0] == 250  # at the limit: accepted
    code, text = send(ingest.port("inline"), message(6))
    assert code == 554 and text.startswith(b"5.4.6")
    assert send(ingest.port("feed"), message(6))[0] == 250  # journaling feeds do not relay
    events = consume_all(ingest.config, ingest.config.kafka.topics.messages.name, min_count=2)
    # as received: 5 and 6 (was: in raw; raw now starts with ingest's own Received: field)
    stored = [decode(e.value() or b"", MESSAGE_RECEIVED) for e in events]
    assert sorted(as_received(e).count(b"Received:") for e in stored) == [5, 6]
    assert sorted(e["raw"].count(b"Received:") for e in stored) == [6, 7]


def test_each_relay_pass_adds_a_hop() -> None:
    """A next hop that hands the message straight back to ingest: every pass prepends our
    Received field, so the count reaches the limit and the loop ends."""
    config = make_config(
        {
            "ingest": {"listeners": [{"name": "test", "port": 0, "relay": True}]},
            "relay": {"inbound": HOP, "outbound": HOP},
        }
    )
    event = make_event("a@ext.example", ["bob@corp.example"])
    first = received_header(event, config)
    assert first.startswith(b"Received: from client.test ([")
    assert f"id {event['event_id']}".encode() in first
    assert b"\r\n\tfor <bob@corp.example>;" in first


def test_relay_listener_needs_next_hops() -> None:
    from mailjournal.config import ConfigError, load_config_dict

    with pytest.raises(ConfigError, match=r"relay\.inbound and relay\.outbound must be set"):
        load_config_dict(
            {
                "organization": {"accepted_domains": ["corp.example"]},
                "ingest": {"listeners": [{"name": "inline", "port": 25, "relay": True}]},
            }
        )
