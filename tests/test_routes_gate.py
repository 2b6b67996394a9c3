"""A route's slots (pure threading) and what delivery does with a copy whose route is full:
deferred to the first retry tier, not attempted, its attempt count unchanged."""

from __future__ import annotations

import threading
from collections.abc import Callable

from delivery.handler import DeliveryHandler
from delivery.routes import RouteGate
from mailjournal.config import load_config_dict
from mailjournal.consumer.handler import Record, Source
from schemas import DELIVERY_OUTCOME, JOURNAL_COPY, decode
from schemas.events import make_copy_id, new_event_id
from schemas.records import covered_recipient, journal_copy
from tests.fixtures.smtp import CaptureServer, wait_until

ARCHIVE = "journal@tenant.archive.example"


def test_gate_admits_concurrency_plus_waiting_then_refuses_at_once() -> None:
    gate = RouteGate("r", concurrency=1, max_waiting=1)
    release = threading.Event()
    inside: list[str] = []

    def hold(name: str) -> None:
        with gate.enter() as admitted:
            assert admitted
            inside.append(name)
            release.wait(30)

    first = threading.Thread(target=hold, args=("first",))
    first.start()
    wait_until(lambda: gate.active == 1, 10, "first in its slot")
    second = threading.Thread(target=hold, args=("second",))
    second.start()
    wait_until(lambda: gate.waiting == 1, 10, "second waiting")
    with gate.enter() as admitted:
        assert not admitted  # full: refused without waiting
    assert inside == ["first"]
    release.set()
    first.join(10)
    second.join(10)
    assert inside == ["first", "second"]
    assert (gate.active, gate.waiting) == (0, 0)


def copy_record(n: int) -> dict[str, object]:
    event_id = new_event_id()
    return dict(
        journal_copy(
            copy_id=make_copy_id(event_id, ARCHIVE),
            event_id=event_id,
            kind="JOURNAL",
            received_at=0,
            journal_address=ARCHIVE,
            ndr_address="journal-ndr@corp.example",
            format="COPY",
            original_sender="a@ext.example",
            recipients=[covered_recipient("carol@corp.example", "TO")],
            original=f"Subject: {n}\r\n\r\nbody\r\n".encode(),
            directions=["INBOUND"],
        ),
        attempt=2,
    )


def test_a_copy_for_a_full_route_is_deferred_unattempted(
    smtp_capture_factory: Callable[..., CaptureServer],
) -> None:
    slow = smtp_capture_factory()
    slow.data_delay = 3.0  # holds the route's only session
    config = load_config_dict(
        {
            "organization": {"accepted_domains": ["corp.example"]},
            "delivery": {
                "retry_delays_seconds": [7, 30],
                "routes": [
                    {
                        "name": "cloud",
                        "match": ["*.archive.example"],
                        "port": slow.port,
                        "starttls": "off",
                        "concurrency": 1,
                        "max_waiting": 0,
                    }
                ],
            },
        }
    )
    handler = DeliveryHandler(config)
    assert handler.settings.concurrency == 2 * 16 + 1  # the smart host's slots and waiters, +1
    record = Record(Source.INPUT, "journal", 0, 0, None, b"", {})
    results: list[list[object]] = []
    busy = threading.Thread(target=lambda: results.append(handler.process(record, copy_record(1))))
    busy.start()
    route = handler.routes.routes["cloud"]
    wait_until(lambda: route.gate.active == 1, 10, "the first copy in the route's session")
    deferred = handler.process(record, copy_record(2))
    busy.join(30)
    handler.close()
    assert [p.topic for p in deferred] == [
        config.kafka.topics.retry.name + ".0",
        config.kafka.topics.outcomes.name,
    ]
    again = decode(deferred[0].value, JOURNAL_COPY)
    assert again["attempt"] == 2 and again["first_attempt_at"] is None  # not an attempt
    assert handler.stats.deferred == 1 and handler.stats.attempts == 1
    assert len(slow.messages) == 1
    outcome = decode(deferred[1].value, DELIVERY_OUTCOME)
    assert outcome["status"] == "RETRYING" and outcome["attempts"] == 2
    assert "route cloud busy" in str(outcome["remote_reply"])
