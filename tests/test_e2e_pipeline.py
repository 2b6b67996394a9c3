"""End to end through all three stages on the real broker, to a capture SMTP server, with
per-recipient journaling from a real slapd; `mailjournal audit` must find zero gaps."""

from __future__ import annotations

import email
import threading
import time
from collections import Counter
from collections.abc import Callable
from email import policy

import pytest

from mailjournal.config import Config
from tests.fixtures.drain import wait_pipeline_drained
from tests.fixtures.ldap import Slapd
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = pytest.mark.kafka

JOURNAL = "journal@corp.example"  # shared by inbound and outbound (the seed allows it)
JOURNAL_INTERNAL = "journal-internal@corp.example"
NDR = "journal-ndr@corp.example"
SUPERVISOR = "supervisor-archive@corp.example"
TRADING = "trading-archive@corp.example"
BROKEN = "broken-archive@corp.example"  # answers 550


def scenario_config(kafka_config: Config, capture: CaptureServer, slapd: Slapd) -> Config:
    return pipeline_config(
        kafka_config,
        capture.port,
        {
            # the test client on loopback is a trusted submitter (outbound mail, Bcc detection)
            "organization": {"trusted_networks": ["127.0.0.0/8"]},
            "journal": {
                "sender": "mailjournal@corp.example",
                "inbound": {
                    "address": JOURNAL,
                    "ndr_address": NDR,
                    "recipient_attribute": "extensionAttribute10",
                },
                "outbound": {
                    "address": JOURNAL,
                    "ndr_address": NDR,
                    "recipient_attribute": "extensionAttribute10",
                },
                "internal": {"enabled": True, "address": JOURNAL_INTERNAL, "ndr_address": NDR},
            },
            "directory": slapd.directory_config(),
        },
    )


def copies_by_event(capture: CaptureServer) -> dict[str, list[tuple[str, str, bytes]]]:
    """event id -> [(envelope recipient, envelope sender, data)] of journal copies received."""
    out: dict[str, list[tuple[str, str, bytes]]] = {}
    for m in capture.messages:
        msg = email.message_from_bytes(m.data, policy=policy.compat32)
        event = msg.get("X-MailJournal-Event-Id")
        if (
            event
            and msg.get("X-MailJournal-Copy-Id")
            and not msg.get_content_type().startswith("multipart/report")
        ):
            for rcpt in m.rcpt_tos:
                out.setdefault(event, []).append((rcpt, m.mail_from, m.data))
    return out


def report_lines(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=policy.default)
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    return [line for line in part.get_content().splitlines() if line]


def test_scenarios_yield_exactly_the_expected_copies_and_ndrs(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    slapd: Slapd,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    slapd.add_user(
        "alice", "alice@corp.example", journal=[SUPERVISOR], aliases=["a.smith@corp.example"]
    )
    slapd.add_user("bob", "bob@corp.example", journal=[TRADING])
    slapd.add_user("carol", "carol@corp.example")
    slapd.add_user("dave", "dave@corp.example", journal=[BROKEN])
    smtp_capture.always(BROKEN, "550 5.1.1 <broken-archive@corp.example>: mailbox unavailable")

    p = pipeline_factory(scenario_config(kafka_config, smtp_capture, slapd)).start()

    ev = {
        # external -> internal: global + Alice's per-recipient address (found through her alias)
        "inbound": p.send("partner@ext.example", ["a.smith@corp.example"]),
        # internal (trusted loopback client) -> external, with a Bcc: global + Bob's address
        "outbound_bcc": p.send(
            "bob@corp.example",
            ["customer@ext.example", "secret@other.example"],
            to=["customer@ext.example"],
        ),
        # internal -> internal: journaled because [journal.internal] is on
        "internal": p.send("carol@corp.example", ["alice@corp.example"]),
        # mixed recipients, external sender: the internal one inbound, the external outbound
        "mixed": p.send(
            "partner@ext.example",
            ["carol@corp.example", "cc@ext.example"],
            to=["carol@corp.example"],
            cc=["cc@ext.example"],
        ),
        # Dave's archive refuses: one NDR to the inbound NDR address
        "refused": p.send("partner@ext.example", ["dave@corp.example"]),
        # mail to the journal mailbox itself is never journaled
        "to_journal": p.send("bob@corp.example", [JOURNAL]),
    }
    expected = {
        ev["inbound"]: {JOURNAL, SUPERVISOR},
        ev["outbound_bcc"]: {JOURNAL, TRADING},
        ev["internal"]: {JOURNAL_INTERNAL},
        ev["mixed"]: {JOURNAL},
        ev["refused"]: {JOURNAL},  # the BROKEN copy is refused and NDR'd instead
    }

    def ndrs() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_capture.messages if m.rcpt_tos == [NDR]]

    wait_until(
        lambda: (
            {e: {r for r, _, _ in c} for e, c in copies_by_event(smtp_capture).items()} == expected
            and len(ndrs()) >= 1
        ),
        90,
        "all journal copies and the NDR",
    )
    wait_pipeline_drained(p.config, diagnose=p.problems)  # anything extra was sent by now
    got = copies_by_event(smtp_capture)
    assert {e: sorted(r for r, _, _ in c) for e, c in got.items()} == {
        e: sorted(v) for e, v in expected.items()
    }
    # every journal copy is sent with the NDR address as envelope sender
    assert {s for c in got.values() for _, s, _ in c} == {NDR}

    # the inbound report lists the envelope recipient as written by the sender
    (inbound_report,) = [d for r, _, d in got[ev["inbound"]] if r == JOURNAL]
    lines = report_lines(inbound_report)
    assert lines[0] == "Sender: partner@ext.example"
    assert "To: a.smith@corp.example" in lines
    # the Bcc recipient of the outbound message is named as such
    (outbound_report,) = [d for r, _, d in got[ev["outbound_bcc"]] if r == JOURNAL]
    lines = report_lines(outbound_report)
    assert "To: customer@ext.example" in lines and "Bcc: secret@other.example" in lines
    # the external recipient of the mixed message, relayed by the trusted loopback client, is
    # outbound (was: not covered, when direction followed the external MAIL FROM); inbound and
    # outbound share the journal address, so one copy covers both
    (mixed_report,) = [d for r, _, d in got[ev["mixed"]]]
    assert "Cc: cc@ext.example" in report_lines(mixed_report)
    assert "X-MailJournal-Direction: inbound, outbound" in mixed_report.decode(errors="replace")

    # exactly one NDR, from <>, to the NDR address, about the refused copy
    (ndr,) = ndrs()
    assert ndr.mail_from == ""
    dsn = email.message_from_bytes(ndr.data, policy=policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    status = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_bytes().decode(errors="replace")
    assert "Action: failed" in text and "5.1.1" in text and BROKEN in text
    assert ev["to_journal"] not in got

    audit = p.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
    assert f"messages in window: {len(ev)}" in audit.stdout


def test_each_stage_killed_once_during_a_flow_loses_nothing(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    config = pipeline_config(
        kafka_config, smtp_capture.port, {"organization": {"trusted_networks": ["10.0.0.0/8"]}}
    )
    p = pipeline_factory(config).start()
    total = 300
    accepted: list[str] = []
    refused = Counter[str]()
    done = threading.Event()

    def sender() -> None:
        i = 0
        while i < total:
            try:
                accepted.append(p.send("partner@ext.example", [f"user{i}@corp.example"]))
                i += 1
            except Exception as exc:  # an MTA retries until it gets 250
                refused[type(exc).__name__] += 1
                time.sleep(0.2)  # not synchronisation: the MTA's retry pause
        done.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    for stage, after in (("ingest", 60), ("journal", 140), ("delivery", 220)):
        wait_until(lambda n=after: len(accepted) >= n, 120, f"{after} messages accepted")
        p.kill_stage(stage)
    assert done.wait(300), f"sender stuck at {len(accepted)}: {p.log_tail()}"
    assert len(set(accepted)) == total

    def delivered_events() -> set[str]:
        return set(copies_by_event(smtp_capture))

    wait_until(lambda: delivered_events() >= set(accepted), 180, "every accepted message journaled")
    copies = Counter(e for e, c in copies_by_event(smtp_capture).items() for _ in c)
    duplicates = sum(n - 1 for n in copies.values())
    print(
        f"\nkilled ingest, journal, delivery once each: {total} accepted, 0 lost, "
        f"{duplicates} duplicate deliveries, client retries {dict(refused)}"
    )
    audit = p.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
    # a kill between Kafka's ack and the 250 leaves a message the client sends again (RFC 1047's
    # duplicate, never a loss): with one sequential client at most one such message per kill
    in_window = int(audit.stdout.split("messages in window: ")[1].split()[0])
    assert total <= in_window <= total + 1, audit.stdout


def test_audit_reports_pending_copies_when_delivery_is_stopped(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    p = pipeline_factory(pipeline_config(kafka_config, smtp_capture.port))
    p.start(stages=("ingest", "journal"))  # delivery is down
    event = p.send("partner@ext.example", ["alice@corp.example"])

    def audit_names_the_gap() -> bool:
        result = p.audit("--grace", "0")
        return result.returncode == 1 and "GAP no-outcome" in result.stdout

    wait_until(audit_names_the_gap, 60, "audit reporting the undelivered copy")
    result = p.audit("--grace", "0")
    assert f"message {event}" in result.stdout and "gaps: 1" in result.stdout
    # within the grace period the same copy is pending, not a gap
    patient = p.audit("--grace", "3600")
    assert patient.returncode == 0 and "in_flight=1" in patient.stdout
    assert smtp_capture.messages == []
