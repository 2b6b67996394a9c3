"""Ingest as the operator runs it: Kafka going away and coming back, SIGTERM in the middle of
transfers, several worker processes on one port."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from devtools.kafka_local import KafkaLocal
from mailjournal.config import Config
from mailjournal.topics import ensure_topics
from tests.fixtures.ingest import (
    IngestProcess,
    RawSMTP,
    RunningIngest,
    free_port,
    message_events,
    with_overrides,
    write_config_file,
)
from tests.fixtures.smtp import wait_until
from tests.fixtures.trace import assert_event_of

pytestmark = pytest.mark.kafka

MESSAGE = b"Subject: durable\r\nMessage-ID: <durable@example.org>\r\n\r\nkeep me\r\n"


def two_free_ports() -> int:
    """A port p with p + 1 free too (a broker and its controller)."""
    for _ in range(50):
        p = free_port()
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", p + 1))
            return p
    raise RuntimeError("no two consecutive free ports")


def test_kafka_unreachable_answers_4xx_then_the_retry_is_stored_once(
    ingest_factory: Callable[..., RunningIngest], kafka_config: Config, tmp_path: Path
) -> None:
    port = two_free_ports()
    dead = with_overrides(
        kafka_config,
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{port}"},
            "ingest": {"kafka_ack_timeout_seconds": 2},
        },
    )
    ing = ingest_factory(base=dead)
    with smtplib.SMTP("127.0.0.1", ing.port(), timeout=30) as s:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("a@example.org", ["u@corp.example"], MESSAGE)
        assert refused.value.smtp_code == 451
        err: bytes | str = refused.value.smtp_error
        assert (err.decode() if isinstance(err, bytes) else err).startswith("4.3.0")
        assert 1.5 < time.monotonic() - started < 10
    # Kafka comes up where the config says it is; the client retries until it gets 250
    kafka = KafkaLocal(tmp_path / "kafka", brokers=1, base_port=port, die_with_parent=True)
    try:
        kafka.up(timeout=180)
        ensure_topics(dead)
        deadline = time.monotonic() + 90
        replies = []
        while True:
            with smtplib.SMTP("127.0.0.1", ing.port(), timeout=30) as s:
                s.ehlo()
                s.mail("a@example.org")
                s.rcpt("u@corp.example")
                code, reply = s.data(MESSAGE)
            replies.append((code, reply))
            if code == 250:
                break
            assert code == 451, reply
            assert time.monotonic() < deadline, f"still refused: {replies[-3:]}"
            time.sleep(0.5)  # not synchronisation: a sending MTA's retry pause after a 451
        event_id = reply.decode().rsplit(" ", 1)[1]
        events = message_events(dead, min_count=1)
        assert [e["event_id"] for e in events] == [event_id]  # nothing from the 451s
        assert_event_of(events[0], MESSAGE)
    finally:
        ing.stop(grace=5)
        kafka.down()


def subprocess_config(kafka_config: Config, tmp_path: Path, *, metrics_port: int = 0) -> Config:
    return with_overrides(
        kafka_config,
        {
            "ingest": {"listeners": [{"name": "mx", "host": "127.0.0.1", "port": free_port()}]},
            "metrics": {"ingest_port": metrics_port},
            "logging": {"level": "INFO"},
        },
    )


def test_sigterm_finishes_transfers_in_flight(kafka_config: Config, tmp_path: Path) -> None:
    config = subprocess_config(kafka_config, tmp_path)
    port = config.ingest.listeners[0].port
    proc = IngestProcess(write_config_file(config, tmp_path / "ingest.toml"), [port])
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                    s.ehlo()
                    s.mail(f"s{n}@example.org")
                    s.rcpt("u@corp.example")
                    code, reply = s.data(
                        f"Subject: {n}-{i}\r\n\r\n".encode() + (b"x" * 70 + b"\r\n") * 280
                    )
            except (OSError, smtplib.SMTPException):
                continue  # refused or cut off: not accepted, the client would retry
            if code == 250:
                with lock:
                    accepted.append(reply.decode().rsplit(" ", 1)[1])

    try:
        with RawSMTP(port) as mid:
            assert mid.reply()[0] == 220
            assert mid.cmd("EHLO slow.example")[0] == 250
            assert mid.cmd("MAIL FROM:<slow@example.org>")[0] == 250
            assert mid.cmd("RCPT TO:<u@corp.example>")[0] == 250
            assert mid.cmd("DATA")[0] == 354
            mid.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
            threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            wait_until(lambda: len(accepted) >= 10, 30, "10 messages accepted", diagnose=proc.log)
            proc.proc.send_signal(15)  # SIGTERM, mid-transfer
            wait_until(
                lambda: "stopping: no new connections" in proc.log(), 30, "the graceful stop"
            )
            mid.send(b"second half\r\n.\r\n")
            code, text = mid.reply()
            assert code == 250, text  # the transfer in flight was finished, not cut
            accepted.append(text.rsplit(" ", 1)[1])
            code, text = mid.reply()  # then the session is closed politely
            assert (code, text.split()[0]) == (421, "4.3.2")
        rc = proc.proc.wait(60)
        stop.set()
        for t in threads:
            t.join(60)
        assert rc == 0, proc.log()
        assert "stopped" in proc.log()
    finally:
        stop.set()
        proc.kill()
    events = message_events(config, min_count=len(accepted), timeout=60)
    stored = {e["event_id"] for e in events}
    missing = set(accepted) - stored
    assert not missing, f"{len(missing)} messages answered 250 are not in Kafka"
    assert any(e["headers"]["subject"] == "in flight" for e in events)


def metric_total(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_workers_share_one_port(kafka_config: Config, tmp_path: Path) -> None:
    metrics_port = free_port()
    config = subprocess_config(kafka_config, tmp_path, metrics_port=metrics_port)
    port = config.ingest.listeners[0].port
    proc = IngestProcess(write_config_file(config, tmp_path / "ingest.toml"), [port], workers=2)
    try:
        # both workers listen on the port (SO_REUSEPORT), and one endpoint serves metrics
        wait_until(
            lambda: len(_listening(proc.proc.pid, port)) >= 2 and _ready(metrics_port),
            60,
            "two workers listening and metrics ready",
            diagnose=proc.log,
        )
        workers = [psutil.Process(pid) for pid in _listening(proc.proc.pid, port)]
        ids = []
        for i in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.ehlo()
                s.mail("a@example.org")
                s.rcpt("u@corp.example")
                code, reply = s.data(f"Subject: w{i}\r\n\r\nx\r\n".encode())
                assert code == 250
                ids.append(reply.decode().rsplit(" ", 1)[1])
        # one metrics endpoint, the sum over the workers
        wait_until(
            lambda: metric_total(metrics_port, "mailjournal_ingest_messages_accepted_total") >= 20,
            10,
            "20 accepted messages in the summed metrics",
        )
        assert metric_total(metrics_port, "mailjournal_ingest_messages_accepted_total") == 20
        assert proc.terminate() == 0, proc.log()
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    finally:
        proc.kill()
    events = message_events(config, min_count=20)
    assert sorted(e["event_id"] for e in events) == sorted(ids)


def _listening(parent: int, port: int) -> set[int]:
    pids = set()
    for p in psutil.Process(parent).children():
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections("tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                    pids.add(p.pid)
    return pids


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def test_a_worker_that_dies_is_restarted(kafka_config: Config, tmp_path: Path) -> None:
    metrics_port = free_port()
    config = subprocess_config(kafka_config, tmp_path, metrics_port=metrics_port)
    port = config.ingest.listeners[0].port
    proc = IngestProcess(write_config_file(config, tmp_path / "ingest.toml"), [port], workers=2)
    try:
        wait_until(
            lambda: len(_listening(proc.proc.pid, port)) == 2 and _ready(metrics_port),
            60,
            "two workers listening and metrics ready",
            diagnose=proc.log,
        )
        before = _listening(proc.proc.pid, port)
        victim = min(before)
        psutil.Process(victim).kill()
        # the parent notices, waits its first backoff delay and starts a new worker in its place
        wait_until(
            lambda: len(after := _listening(proc.proc.pid, port)) == 2 and victim not in after,
            60,
            "the dead worker replaced",
            diagnose=proc.log,
        )
        assert f"(pid {victim}) exited with -9; restarting in 1 s" in proc.log()
        wait_until(lambda: _ready(metrics_port), 30, "metrics ready again", diagnose=proc.log)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo()
            s.mail("a@example.org")
            s.rcpt("u@corp.example")
            assert s.data(b"Subject: after\r\n\r\nx\r\n")[0] == 250
        assert proc.terminate() == 0, proc.log()
    finally:
        proc.kill()
