"""The relay stage (inline mode) against real Kafka and a scriptable SMTP next hop on loopback:
retries, per-recipient failures, DSNs to senders as RFC 3461 asks, and crash safety."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailjournal.config import Config, load_config_dict
from mailjournal.consumer.loop import TieredConsumer
from mailjournal.topics import ensure_topics
from relay.handler import RelayHandler
from relay.retry import relay_tier_topics
from tests.fixtures.config import deep_merge, write_config_file
from tests.fixtures.delivery import TEST_CONSUMER, WorkerThread, read_dead_letters
from tests.fixtures.drain import wait_relay_drained
from tests.fixtures.journal import make_event, produce_events
from tests.fixtures.smtp import CaptureServer, wait_until

SENDER = "alice@sender.example"


def relay_config(base: Config, port: int, **relay: Any) -> Config:
    """``base`` with an inline listener ("test", the listener of make_event) and every next hop
    on the capture server at ``port``."""
    suffix = base.kafka.topics.messages.name.rsplit(".", 1)[-1]
    hop = {"host": "127.0.0.1", "port": port}
    data = deep_merge(
        base.model_dump(mode="json"),
        {
            "ingest": {"listeners": [{"name": "test", "port": 0, "relay": True}]},
            "relay": {
                "inbound": hop,
                "outbound": hop,
                "retry_delays_seconds": [0.5],
                "expiry_seconds": 30,
                **relay,
            },
            "delivery": {
                "connect_timeout_seconds": 5,
                "command_timeout_seconds": 10,
                "reporting_mta": "relay.test",
            },
            "kafka": {
                "consumer": TEST_CONSUMER,
                "relay_group": f"mailjournal-relay.{suffix}",
                "topics": {"relay_retry": {"name": f"mailjournal.relay.retry.{suffix}"}},
            },
            "metrics": {"relay_port": 0},
        },
    )
    config = load_config_dict(data)
    ensure_topics(config)
    return config


@pytest.fixture
def hop() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


def relay_worker(config: Config) -> WorkerThread:
    return WorkerThread(config, RelayHandler(config))


def dsns(hop: CaptureServer) -> list[Any]:
    return [m for m in hop.messages if m.mail_from == ""]


def status_fields(data: bytes) -> list[dict[str, str]]:
    msg = email.message_from_bytes(data)
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            return [dict(block.items()) for block in part.get_payload()]
    raise AssertionError("no message/delivery-status part")


def test_451_then_250_is_retried_and_delivered_once(
    kafka_config: Config, hop: CaptureServer
) -> None:
    config = relay_config(kafka_config, hop.port)
    hop.script("bob@corp.example", "451 4.3.0 try later")
    event = make_event(SENDER, ["bob@corp.example"])
    produce_events(config, [event])
    with relay_worker(config):
        got = hop.wait_for(to="bob@corp.example", timeout=30)
        wait_relay_drained(config)  # done with the original and its retry: nothing more comes
    assert len(hop.messages_to("bob@corp.example")) == 1
    msg = got[0]
    assert msg.mail_from == SENDER and msg.rcpt_tos == ["bob@corp.example"]
    # the original's bytes, after our Received trace field
    assert msg.data.endswith(event["raw"])
    assert msg.data.startswith(b"Received: from client.test ([")
    assert [a.reply[:3] for a in hop.attempts_for("bob@corp.example")] == ["451", "250"]
    assert dsns(hop) == []


def test_550_for_one_of_two_dsn_for_that_one_only(kafka_config: Config, hop: CaptureServer) -> None:
    config = relay_config(kafka_config, hop.port)
    hop.always("gone@corp.example", "550 5.1.1 no such user")
    event = make_event(SENDER, ["bob@corp.example", "gone@corp.example"], subject="two")
    produce_events(config, [event])
    with relay_worker(config):
        hop.wait_for(to="bob@corp.example", timeout=30)
        wait_until(lambda: dsns(hop), 30, "a DSN to the sender")
        wait_relay_drained(config)
    # bob got the original in one transaction; gone@ was refused at RCPT and never got it
    assert [m.rcpt_tos for m in hop.messages if m.mail_from == SENDER] == [["bob@corp.example"]]
    [dsn] = dsns(hop)
    assert dsn.rcpt_tos == [SENDER]
    blocks = status_fields(dsn.data)
    recipients = [b for b in blocks if "Final-Recipient" in b]
    assert [b["Final-Recipient"] for b in recipients] == ["rfc822; gone@corp.example"]
    assert recipients[0]["Action"] == "failed" and recipients[0]["Status"] == "5.1.1"
    assert "550 5.1.1 no such user" in recipients[0]["Diagnostic-Code"]
    msg = email.message_from_bytes(dsn.data)
    assert msg["To"] == f"<{SENDER}>" and msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"


def test_notify_never_gets_no_dsn(kafka_config: Config, hop: CaptureServer) -> None:
    config = relay_config(kafka_config, hop.port)
    hop.always("gone@corp.example", "550 5.1.1 no such user")
    event = make_event(SENDER, ["gone@corp.example"])
    event["recipients"][0]["notify"] = ["NEVER"]
    produce_events(config, [event])
    with relay_worker(config):
        wait_until(lambda: read_dead_letters(config), 30, "the original kept as a dead letter")
        wait_relay_drained(config)
    assert dsns(hop) == [] and hop.messages == []
    [dead] = read_dead_letters(config)
    assert "notify_never" in dead["reason"]


def test_null_sender_failure_gets_no_dsn(kafka_config: Config, hop: CaptureServer) -> None:
    config = relay_config(kafka_config, hop.port)
    hop.always("gone@corp.example", "550 5.1.1 no such user")
    produce_events(config, [make_event("", ["gone@corp.example"])])
    with relay_worker(config):
        wait_until(lambda: read_dead_letters(config), 30, "the original kept as a dead letter")
        wait_relay_drained(config)
    assert hop.messages == []
    assert [a.stage for a in hop.attempts if a.stage == "mail"] == ["mail"]  # one try, no DSN
    assert "null_sender" in read_dead_letters(config)[0]["reason"]


def test_expiry_dsn_respects_ret_hdrs_envid_orcpt(kafka_config: Config, hop: CaptureServer) -> None:
    config = relay_config(kafka_config, hop.port, expiry_seconds=1.0)
    hop.always("slow@corp.example", "451 4.2.0 mailbox busy")
    event = make_event(SENDER, ["slow@corp.example"], body=b"secret body\r\n")
    event["mail_params"].update(ret="HDRS", envid="env+2Bid-1")
    event["recipients"][0].update(notify=["FAILURE"], orcpt="rfc822;Slow+2BX@corp.example")
    produce_events(config, [event])
    with relay_worker(config):
        wait_until(lambda: dsns(hop), 30, "an expiry DSN")
    [dsn] = dsns(hop)
    blocks = status_fields(dsn.data)
    assert blocks[0]["Original-Envelope-Id"] == "env+id-1"
    assert blocks[1]["Original-Recipient"] == "rfc822;Slow+X@corp.example"
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "4.2.0"
    assert b"text/rfc822-headers" in dsn.data and b"secret body" not in dsn.data


def test_messages_of_journal_only_listeners_are_not_relayed(
    kafka_config: Config, hop: CaptureServer
) -> None:
    config = relay_config(kafka_config, hop.port)
    other = make_event(SENDER, ["carol@corp.example"])
    other["listener"] = "feed"  # a pure journaling feed: never relayed
    mine = make_event(SENDER, ["bob@corp.example"])
    produce_events(config, [other, mine])
    with relay_worker(config):
        hop.wait_for(to="bob@corp.example", timeout=30)
        wait_relay_drained(config)  # past both records: carol's was handled, not relayed
    assert hop.messages_to("carol@corp.example") == []


def test_kill_mid_flow_loses_nothing(
    kafka_config: Config, hop: CaptureServer, tmp_path: Path
) -> None:
    """SIGKILL the relay process while it works through 200 originals: after a restart every one
    arrives; duplicates (the records after the last commit) are counted and bounded."""
    config = relay_config(kafka_config, hop.port, concurrency=4, max_inflight=32)
    hop.data_delay = 0.01
    n = 200
    events = [make_event(SENDER, [f"user{i}@corp.example"]) for i in range(n)]
    produce_events(config, events)
    path = write_config_file(config, tmp_path / "relay.toml")
    argv = [sys.executable, "-m", "mailjournal", "relay", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(argv, env=env)
    try:
        wait_until(lambda: len(hop.messages) >= 40, 60, "relaying under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = len(hop.messages)
        proc = subprocess.Popen(argv, env=env)
        wait_until(lambda: len({m.rcpt_tos[0] for m in hop.messages}) >= n, 120, "all relayed")
        wait_relay_drained(config)
    finally:
        proc.terminate()
        proc.wait(30)
    per_rcpt = Counter(m.rcpt_tos[0] for m in hop.messages)
    assert set(per_rcpt) == {f"user{i}@corp.example" for i in range(n)}
    duplicates = sum(c - 1 for c in per_rcpt.values())
    print(f"relayed {n}, killed after {at_kill}, duplicates {duplicates}")
    # only records after the last commit are sent again: at most what was in flight
    assert duplicates <= 32 + 4


def test_the_relay_runs_on_the_tiered_consumer(kafka_config: Config, hop: CaptureServer) -> None:
    config = relay_config(kafka_config, hop.port)
    w = TieredConsumer(config, RelayHandler(config))
    assert w.settings.topic == config.kafka.topics.messages.name
    assert list(w.retry_topics) == relay_tier_topics(config)
    assert w.settings.group == config.kafka.relay_group
