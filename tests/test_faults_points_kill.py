"""A crash at each named fault point of the stages (``mailjournal/faults.py``), on the real
pipeline (``mailjournal run``) and real Kafka, delivering to a capture SMTP server. Each test
arms one point through the environment, waits until the fault log says the process died
exactly there, and then proves the guarantee that crash site threatens.

A point fires once per fault log, so the stage the supervisor restarts runs normally."""

from __future__ import annotations

import email
import os
import smtplib
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import schemas
from mailjournal.config import Config
from mailjournal.kafka import make_producer
from schemas import DEAD_LETTER, JOURNAL_COPY, encode, new_event_id, now_millis
from tests.fixtures.delivery import delivery_config, make_copy
from tests.fixtures.faults import (
    JOURNAL,
    audit_clean,
    fault_config,
    fault_env,
    fired,
    sink_copies,
    wait_fault,
)
from tests.fixtures.kafka import consume_all
from tests.fixtures.pipeline import REPO, Pipeline
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

INBOUND = ("partner@ext.example", ["carol@corp.example"])  # one global journal copy


def message(n: int) -> bytes:
    return (
        f"From: <partner@ext.example>\r\nTo: <carol@corp.example>\r\nSubject: fault {n}\r\n"
        f"Message-ID: <fault.{n}.{os.getpid()}@test.example>\r\n\r\nmessage {n}\r\n"
    ).encode()


def submit(port: int, data: bytes) -> tuple[int, str]:
    """One SMTP transaction from a fresh connection: (reply code, event id) for the DATA, or
    (0, "") when the connection died before the reply."""
    sender, rcpts = INBOUND
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo("client.test")
            assert smtp.mail(sender)[0] == 250
            for r in rcpts:
                assert smtp.rcpt(r)[0] == 250
            code, reply = smtp.data(data)
            return code, reply.decode().rsplit(" ", 1)[-1]
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return 0, ""


def kafka_events_with(config: Config, marker: bytes) -> list[dict[str, Any]]:
    """The MessageReceived events in the messages topic whose raw message contains ``marker``."""
    out = []
    for m in consume_all(config, config.kafka.topics.messages.name, timeout=30):
        ev = schemas.decode(m.value() or b"", schemas.MESSAGE_RECEIVED)
        if marker in bytes(ev["raw"]):
            out.append(ev)
    return out


def until(p: Pipeline, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_until that, on timeout, shows the stages' recent warnings."""
    return wait_until(predicate, timeout, what, diagnose=p.problems)


def start_armed(
    factory: Callable[[Config], Pipeline], config: Config, spec: str, log: Path
) -> Pipeline:
    return factory(config).start(env_extra=fault_env(spec, log))


def test_ingest_killed_after_the_kafka_ack_before_the_250(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
    tmp_path: Path,
) -> None:
    """Fault point ``ingest.after_ack`` (kill): Kafka has acknowledged the event, the client
    never gets the ``250``. The event is in Kafka (acks=all before the reply); the client sends
    again, as an MTA does, and gets ``250``: both are journaled (RFC 1047's duplicate, never a
    loss) and the audit finds zero gaps."""
    log = tmp_path / "faults.log"
    config = fault_config(kafka_config, smtp_capture, None)
    p = start_armed(pipeline_factory, config, "ingest.after_ack:kill", log)
    data = message(1)

    code, _ = submit(p.smtp_port, data)
    assert code == 0, "the client must not get a reply: ingest died before writing it"
    [(point, pid)] = wait_until(lambda: fired(log), 30, "ingest.after_ack to fire")
    assert point == "ingest.after_ack"
    [first] = kafka_events_with(config, b"Subject: fault 1")  # durable before the 250
    # the supervisor restarts ingest (not armed again); the client's retry gets its 250
    until(p, lambda: p.stage_pid("ingest") not in (None, pid), 60, "ingest restarted")
    p.wait_ready("ingest")
    code, retried = submit(p.smtp_port, data)
    assert code == 250
    events = {ev["event_id"] for ev in kafka_events_with(config, b"Subject: fault 1")}
    assert events == {first["event_id"], retried}
    until(p, lambda: events <= {e for e, _ in sink_copies(smtp_capture)}, 120, "both journaled")
    report = audit_clean(p)
    assert "messages in window: 2" in report, report


def test_delivery_killed_after_the_remote_250(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
    tmp_path: Path,
) -> None:
    """Fault point ``delivery.after_remote_250`` (kill): the archive has the copy, the outcome
    is not produced nor the offset committed. The restarted stage sends exactly that copy
    again (at-least-once, same Message-ID); every later copy arrives once; audit 0 gaps."""
    log = tmp_path / "faults.log"
    config = fault_config(kafka_config, smtp_capture, None)
    p = start_armed(pipeline_factory, config, "delivery.after_remote_250:kill", log)

    code, first = submit(p.smtp_port, message(1))
    assert code == 250
    wait_fault(log, "delivery.after_remote_250", 120, stopped=False, diagnose=p.problems)
    assert [e for e, _ in sink_copies(smtp_capture)] == [first]  # it arrived, then the crash
    until(p, lambda: sink_copies(smtp_capture)[(first, JOURNAL)] == 2, 120, "the copy sent again")
    later = [submit(p.smtp_port, message(n)) for n in range(2, 6)]
    assert [c for c, _ in later] == [250] * 4
    ids = {first} | {e for _, e in later}
    until(p, lambda: ids <= {e for e, _ in sink_copies(smtp_capture)}, 120, "all delivered")
    report = audit_clean(p)
    copies = sink_copies(smtp_capture)
    assert copies == Counter({(e, JOURNAL): 2 if e == first else 1 for e in ids}), copies
    # the crash came before the first delivery's outcome: the audit sees one delivery of it
    assert "copy states: delivered=5" in report and "DUPLICATE" not in report, report
    assert len(fired(log)) == 1  # the restarted stage was not armed again


def test_audit_killed_mid_scan_then_rerun(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
    tmp_path: Path,
) -> None:
    """Fault point ``audit.mid_scan`` (kill after 3 messages read): the audit only reads, so a
    crashed audit leaves nothing behind and re-running it completes with the right figures."""
    config = fault_config(kafka_config, smtp_capture, None)
    p = pipeline_factory(config).start()
    ids = {submit(p.smtp_port, message(n))[1] for n in range(6)}
    until(p, lambda: ids <= {e for e, _ in sink_copies(smtp_capture)}, 120, "delivered")
    log = tmp_path / "faults.log"
    killed = subprocess.run(
        [sys.executable, "-m", "mailjournal", "audit", "--config", str(p.config_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **fault_env("audit.mid_scan:kill@3", log)},
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [n for n, _ in fired(log)] == ["audit.mid_scan"]
    assert "gaps:" not in killed.stdout  # died before any report
    report = audit_clean(p)
    assert "messages in window: 6" in report and "journal copies owed: 6" in report, report


def dead_letter(copy: dict[str, Any], source: str) -> dict[str, Any]:
    """A DeadLetter as the delivery stage writes it for a copy it gave up on."""
    return {
        "id": new_event_id(),
        "at": now_millis(),
        "reason": "550 5.7.1 journal mailbox refuses",
        "source_topic": source,
        "partition": 0,
        "offset": 0,
        "key": str(copy["copy_id"]).encode(),
        "value": encode(JOURNAL_COPY, copy),
        "headers": {},
        "copy_id": copy["copy_id"],
        "event_id": copy["event_id"],
    }


def replay(config_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailjournal", "dlq", "replay", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=120,
        check=False,
    )


def test_dlq_replay_killed_mid_batch_then_rerun(
    kafka_config: Config, smtp_capture: CaptureServer, tmp_path: Path
) -> None:
    """Fault point ``dlq.replay.mid_batch`` (kill after the first of three dead letters is
    re-produced): the replay transaction never commits, so nothing is re-queued; running the
    replay again re-queues each dead letter exactly once, and a third run finds none open."""
    from delivery import dlq
    from tests.fixtures.delivery import write_toml

    config = delivery_config(kafka_config, smtp_capture.port)
    topics = config.kafka.topics
    copies = [make_copy(subject=f"dead {n}") for n in range(3)]
    producer = make_producer(config, role="test-producer")
    for c in copies:
        value = encode(DEAD_LETTER, dead_letter(c, topics.journal.name))
        producer.produce(topics.dead_letters.name, key=str(c["copy_id"]).encode(), value=value)
    assert producer.flush(30) == 0
    config_file = write_toml(config, tmp_path / "mailjournal.toml")
    log = tmp_path / "faults.log"

    killed = replay(config_file, fault_env("dlq.replay.mid_batch:kill", log))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [n for n, _ in fired(log)] == ["dlq.replay.mid_batch"]
    # the open transaction is aborted when the next replay fences it: nothing was re-queued
    assert len(dlq.open_dead_letters(dlq.read_dead_letters(config))) == 3

    again = replay(config_file, {})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "replayed 3 dead letter(s)" in again.stderr
    requeued = Counter(
        schemas.decode(m.value() or b"", JOURNAL_COPY)["copy_id"]
        for m in consume_all(config, topics.journal.name, timeout=30)
    )
    assert requeued == Counter({c["copy_id"]: 1 for c in copies})
    assert dlq.open_dead_letters(dlq.read_dead_letters(config)) == []
    third = replay(config_file, {})
    assert third.returncode == 0 and "replayed 0 dead letter(s)" in third.stderr


def test_relay_killed_between_recipient_groups(kafka_config: Config, tmp_path: Path) -> None:
    """Fault point ``relay.between_recipients`` (kill): one original for an internal and an
    external recipient (two next-hop groups, sent one after the other); the relay dies after
    the first group got its ``250`` and before the second was sent. The restart sends both:
    the second group exactly once, the first at most twice, nobody missing."""
    from tests.fixtures.config import write_config_file
    from tests.fixtures.journal import make_event, produce_events
    from tests.test_relay_worker import SENDER, relay_config

    with CaptureServer() as hop:
        config = relay_config(kafka_config, hop.port)
        event = make_event(SENDER, ["bob@corp.example", "dave@ext.example"])
        produce_events(config, [event])
        path = write_config_file(config, tmp_path / "relay.toml")
        log = tmp_path / "faults.log"
        argv = [sys.executable, "-m", "mailjournal", "relay", "--config", str(path)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        first = subprocess.Popen(
            argv, env={**env, **fault_env("relay.between_recipients:kill", log)}
        )
        try:
            assert first.wait(120) == -9
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert [n for n, _ in fired(log)] == ["relay.between_recipients"]
        [sent] = hop.messages  # the first group only
        assert sent.mail_from == SENDER and len(sent.rcpt_tos) == 1
        done_first = sent.rcpt_tos[0]
        other = ({"bob@corp.example", "dave@ext.example"} - {done_first}).pop()

        second = subprocess.Popen(argv, env=env)
        try:
            wait_until(lambda: hop.messages_to(other), 60, f"the relay to reach {other}")
            # the first group's copy comes again (no commit before the crash) before or with it
            wait_until(lambda: len(hop.messages_to(done_first)) == 2, 60, "the first group again")
        finally:
            second.terminate()
            second.wait(30)
        assert len(hop.messages_to(other)) == 1
        for m in hop.messages:
            assert email.message_from_bytes(m.data)["Message-ID"] == f"<{event['event_id']}@test>"
