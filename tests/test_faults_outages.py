"""Outages of the parts around the pipeline, on the session's real Kafka: the smart host down for
a while (nothing NDR'd before the expiry, everything delivered after), slapd down for a while
(messages owing per-recipient copies wait, none is journaled without them, all complete after).
Each ends with ``mailjournal audit`` at zero gaps."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mailjournal.config import Config
from tests.fixtures.faults import (
    MIX,
    Load,
    audit_clean,
    brief,
    fault_config,
    journal_copy_counts,
    retried,
    seed_users,
    sink_copies,
    stage_metric,
    summary,
)
from tests.fixtures.ldap import Slapd
from tests.fixtures.pipeline import Pipeline
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


def test_smart_host_down_for_a_while_then_back(
    kafka_config: Config,
    smtp_capture_factory: Callable[..., CaptureServer],
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    first = smtp_capture_factory()
    config = fault_config(kafka_config, first, None, {"delivery": {"expiry_seconds": 300}})
    p = pipeline_factory(config).start()
    first.stop()  # the smart host goes away before any copy is delivered
    stopped_at = time.monotonic()
    load = Load(p.smtp_port, 200, rate=50).start()
    load.wait(120)
    # down for a while: every copy goes through the retry tiers (0.5 s, 1 s, then the last again)
    wait_until(lambda: retried(config, 200, 3), 120, "200 copies attempted 3 times each")
    outage = round(time.monotonic() - stopped_at, 1)
    assert first.messages == []
    back = smtp_capture_factory(port=first.port)
    wait_until(
        lambda: set(load.accepted.values()) <= {e for e, _ in sink_copies(back)},
        180,
        "every accepted message journaled after the smart host came back",
    )
    report = audit_clean(p)
    figures = summary("smart-host-down", load, back, report, outage_s=outage)
    print(brief(report))
    assert figures["lost"] == 0
    assert figures["ndrs"] == 0  # nothing NDR'd before the expiry
    assert "ndr_sent" not in report and "dead_lettered" not in report
    assert figures["copies_delivered"] == figures["copies_owed"]


def test_slapd_down_for_a_while_then_back(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    slapd: Slapd,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    seed_users(slapd)
    config = fault_config(kafka_config, smtp_capture, slapd)
    p = pipeline_factory(config).start()
    slapd.stop()
    # only messages that owe per-recipient copies (Alice's inbound, Bob's outbound)
    owing = [
        i
        for i, (_, rcpts) in enumerate(MIX)
        if {"alice@corp.example", "bob@corp.example"} & set(rcpts)
    ]
    assert owing
    load = Load(p.smtp_port, 120, rate=40).start()
    load.wait(120)
    # the journal worker waits for the directory: stalled on it, as its own gauge says
    wait_until(
        lambda: stage_metric(p, "journal", "mailjournal_journal_directory_available") == 0,
        60,
        "the journal worker to stall on the directory outage",
        diagnose=p.problems,
    )
    journal_before = journal_copy_counts(config)
    waiting = {
        e for i, e in load.accepted.items() if i % len(MIX) in owing
    }  # none of these may be journaled without its per-recipient copy
    assert not waiting & {e for e, _ in sink_copies(smtp_capture)}
    slapd.start()
    wait_until(
        lambda: set(load.accepted.values()) <= {e for e, _ in sink_copies(smtp_capture)},
        180,
        "every accepted message journaled after slapd came back",
    )
    report = audit_clean(p)
    figures = summary(
        "slapd-down",
        load,
        smtp_capture,
        report,
        journal_records_during_outage=sum(journal_before.values()),
    )
    print(brief(report))
    assert figures["lost"] == 0
    assert figures["copies_delivered"] == figures["copies_owed"]
    assert [c for c, n in journal_copy_counts(config).items() if n > 1] == []
