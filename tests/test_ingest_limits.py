"""The session and client limits of ingest (issue 14, after Postfix smtpd's): the pure counting of
:mod:`ingest.limits` on a fake clock, then each limit against the real ingest on loopback and the
session Kafka, from an untrusted client: the reply, its enhanced status code, the metric, and
that nothing a cut session sent reached Kafka."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ingest.auth import Credentials, PasswordChecker, hash_password
from ingest.limits import AuthFailures, ClientRate, DataRate, SessionCounters
from ingest.proxy import encode_v1
from tests.fixtures.ingest import RawSMTP, RunningIngest, TlsFiles, message_events

# -- pure counting ---------------------------------------------------------------------------------


def test_junk_commands_are_counted_and_reset_by_a_delivery() -> None:
    c = SessionCounters(junk_limit=3, soft_limit=10, hard_limit=20, sleep=1.0)
    assert [c.command(v) for v in ("NOOP", "RSET", "MAIL", "VRFY")] == [False] * 4
    assert c.command("HELP") is True  # the fourth junk command, limit 3
    c.delivered()
    assert [c.command("ETRN") for _ in range(3)] == [False] * 3


def test_errors_are_delayed_past_the_soft_limit_and_end_at_the_hard_limit() -> None:
    c = SessionCounters(junk_limit=100, soft_limit=2, hard_limit=5, sleep=0.5)
    verdicts = [c.error() for _ in range(5)]
    assert [v.delay for v in verdicts] == [0, 0, 0.5, 0.5, 0.0]
    assert [v.close for v in verdicts] == [False, False, False, False, True]
    c.delivered()
    assert c.error().delay == 0  # "errors without delivering mail": counted again from zero


def test_data_rate_earns_time_per_byte_after_the_grace() -> None:
    r = DataRate(min_rate=500, grace=30, started=100.0)
    assert r.deadline(0) == 130.0
    assert r.deadline(5000) == 140.0
    assert not r.too_slow(5000, 139.9) and r.too_slow(5000, 140.0)
    assert DataRate(0, 30, 100.0).deadline(0) is None  # 0: no minimum
    assert not DataRate(0, 30, 100.0).too_slow(0, 1e9)


def test_client_rate_is_a_window_per_address_and_forgets_old_windows() -> None:
    rate = ClientRate(limit=2, window=60)
    assert [rate.connect("192.0.2.1", t) for t in (0, 1, 2)] == [True, True, False]
    assert rate.connect("192.0.2.2", 3)  # another address has its own window
    assert rate.connect("192.0.2.1", 60.0)  # the window opened at 0 is over
    for i in range(100):
        rate.connect(f"198.51.100.{i}", 61)
    rate.connect("192.0.2.9", 200)  # a sweep: only windows still open are kept
    assert len(rate) == 1
    assert all(ClientRate(0).connect("192.0.2.1", t) for t in range(1000))  # 0: no limit


def test_auth_failures_block_an_address_until_the_window_passes() -> None:
    f = AuthFailures(limit=3, window=300)
    for t in (0, 10, 20):
        assert not f.blocked("192.0.2.1", t)
        f.failed("192.0.2.1", t)
    assert f.blocked("192.0.2.1", 21) and f.blocked("192.0.2.1", 299)
    assert not f.blocked("192.0.2.2", 21)
    assert not f.blocked("192.0.2.1", 300)  # the window opened by the first failure is over
    f.failed("192.0.2.1", 301)
    assert not f.blocked("192.0.2.1", 302)


def test_password_checks_run_on_their_own_threads(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text(f"relay1:{hash_password('pw', n=2**10)}\n")
    creds = Credentials(path)
    checker = PasswordChecker(threads=2)
    names: list[str] = []

    def check(user: str | bytes, password: str | bytes) -> str | None:
        names.append(threading.current_thread().name)
        return Credentials.check(creds, user, password)

    creds.check = check  # type: ignore[method-assign]

    async def main() -> list[str | None]:
        return list(await asyncio.gather(*(checker.check(creds, "relay1", "pw") for _ in range(6))))

    try:
        assert asyncio.run(main()) == ["relay1"] * 6
    finally:
        checker.close()
    assert {n.rsplit("_", 1)[0] for n in names} == {PasswordChecker.THREAD_PREFIX}
    assert len(set(names)) <= 2


# -- against the real ingest -------------------------------------------------------------------------


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def refusals(command: str, reason: str, reply_class: str = "4xx", listener: str = "mx") -> float:
    return metric(
        "mailjournal_ingest_refusals_total",
        listener=listener,
        command=command,
        reason=reason,
        reply_class=reply_class,
    )


def codes(reply: tuple[int, str]) -> tuple[int, str]:
    code, text = reply
    return code, text.split(" ", 1)[0]


def proxied(port: int, client: str) -> RawSMTP:
    return RawSMTP(port, preamble=encode_v1(client, 40000, "10.0.0.10", 25))


@pytest.mark.kafka
def test_past_the_junk_command_limit_the_session_is_cut(ingest: RunningIngest) -> None:
    before = refusals("NOOP", "junk_commands")
    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO junk.example")[0] == 250
        assert [c.cmd("NOOP")[0] for _ in range(100)] == [250] * 100  # Postfix's limit: 100
        assert codes(c.cmd("NOOP")) == (421, "4.7.0")
        assert c.closed(timeout=5)
    assert refusals("NOOP", "junk_commands") == before + 1


@pytest.mark.kafka
def test_a_delivered_message_starts_the_junk_count_again(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"ingest": {"junk_command_limit": 3}})
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO reuse.example")[0] == 250
        for n in range(3):  # a client reusing its session sends RSET before each message
            assert [c.cmd("RSET")[0] for _ in range(3)] == [250] * 3
            assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            assert c.cmd(f"Subject: {n}\r\n\r\nx\r\n.")[0] == 250
        assert [c.cmd("NOOP")[0] for _ in range(3)] == [250] * 3
        assert codes(c.cmd("HELP")) == (421, "4.7.0")
    assert len(message_events(ing.config, min_count=3)) == 3


@pytest.mark.kafka
def test_errors_are_delayed_then_the_session_is_cut_at_the_hard_limit(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    """Postfix's 10 / 20 with a shorter sleep: errors 11 to 19 wait 0.3 s each on the server
    before their reply, the 20th is answered 421 4.7.0 and the connection closed."""
    sleep = 0.3
    ing = ingest_factory({"ingest": {"error_sleep_seconds": sleep}})
    delays_before = metric("mailjournal_ingest_error_delays_total", listener="mx")
    cut_before = refusals("SESSION", "hard_errors")
    took: list[float] = []
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO errors.example")[0] == 250
        for _ in range(19):
            sent = time.monotonic()
            assert codes(c.cmd("RCPT TO:<u@corp.example>")) == (503, "5.5.1")  # no MAIL
            took.append(time.monotonic() - sent)
        assert codes(c.cmd("RCPT TO:<u@corp.example>")) == (421, "4.7.0")
        assert c.closed(timeout=5)
    # the server slept before these replies: no reply can arrive sooner than the sleep
    short = [(n + 11, t) for n, t in enumerate(took[10:]) if t < sleep]
    assert not short, f"errors answered sooner than {sleep} s (error number, seconds): {short}"
    assert metric("mailjournal_ingest_error_delays_total", listener="mx") == delays_before + 9
    assert refusals("SESSION", "hard_errors") == cut_before + 1


@pytest.mark.kafka
def test_a_data_phase_below_the_minimum_rate_is_cut(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"ingest": {"min_data_rate": 1000, "data_rate_grace_seconds": 1}})
    before = refusals("DATA", "data_rate")
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO slow.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        started = time.monotonic()
        closed = False
        c.send(b"Subject: slow\r\n\r\n")
        while not closed and time.monotonic() - started < 30:
            # the client trickles 20 bytes every 0.1 s (200 B/s, a fifth of the minimum)
            try:
                c.send(b"x" * 18 + b"\r\n")
            except OSError:
                break
            closed = c.closed(timeout=0.1)
        assert c.buf.startswith(b"421 4.4.2 "), c.buf
        # the grace and the bytes' credit (1 s + under 6 kB at 1000 B/s) had run out
        assert time.monotonic() - started >= 1.0
    assert refusals("DATA", "data_rate") == before + 1
    # a client at a normal speed is served by the same ingest
    with smtplib.SMTP("127.0.0.1", ing.port()) as s:
        s.sendmail(
            "a@example.org",
            ["u@corp.example"],
            b"Subject: fast\r\n\r\n" + (b"y" * 70 + b"\r\n") * 700,
        )
    (event,) = message_events(ing.config, min_count=1)
    assert b"Subject: fast" in event["raw"]


@pytest.mark.kafka
def test_the_session_lifetime_ends_even_a_busy_session(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    lifetime = 1.5
    ing = ingest_factory(
        {"ingest": {"session_lifetime_seconds": lifetime, "junk_command_limit": 10_000}}
    )
    before = refusals("SESSION", "session_lifetime")
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        started = time.monotonic()
        reply = (250, "")
        while reply[0] == 250 and time.monotonic() - started < 30:
            reply = c.cmd("NOOP")  # a client keeping its session busy, ten commands a second
            time.sleep(0.1)
        assert codes(reply) == (421, "4.4.2")
        assert time.monotonic() - started >= lifetime
        assert c.closed(timeout=5)
    assert refusals("SESSION", "session_lifetime") == before + 1


@pytest.mark.kafka
def test_a_message_in_data_is_finished_when_the_lifetime_ends(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"ingest": {"session_lifetime_seconds": 1.0}})
    with RawSMTP(ing.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO data.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: long\r\n\r\n")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the message is still coming past the lifetime
            c.send(b"z" * 998 + b"\r\n")
            time.sleep(0.1)
        code, text = c.cmd(".")
        assert code == 250, text
        assert c.closed(timeout=5)
        assert c.buf.startswith(b"421 4.4.2 Session lifetime"), c.buf
    (event,) = message_events(ing.config, min_count=1)
    assert event["event_id"] == text.rsplit(" ", 1)[1]


LB = {"name": "lb", "port": 0, "proxy_protocol": True, "proxy_protocol_peers": ["127.0.0.1/32"]}


@pytest.mark.kafka
def test_connection_rate_per_client_address(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"client_connection_rate_limit": 3}}, listeners=[LB])
    before = refusals("CONNECT", "connection_rate", listener="lb")
    greetings = []
    for _ in range(4):
        with proxied(ing.port("lb"), "192.0.2.50") as c:
            greetings.append(codes(c.reply()))
    assert [code for code, _ in greetings] == [220, 220, 220, 421]
    assert greetings[3] == (421, "4.7.0")
    assert refusals("CONNECT", "connection_rate", listener="lb") == before + 1
    with proxied(ing.port("lb"), "192.0.2.51") as c:  # another client has its own count
        assert c.reply()[0] == 220
    for _ in range(5):  # trusted networks are exempt (Postfix: $mynetworks)
        with proxied(ing.port("lb"), "10.9.9.9") as c:
            assert c.reply()[0] == 220


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials"
    path.write_text(f"relay1:{hash_password('correct horse', n=2**12)}\n")
    return path


def auth_plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@pytest.mark.kafka
def test_auth_failures_are_throttled_across_connections(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles, credentials: Path
) -> None:
    ing = ingest_factory(
        {"ingest": {"auth_failure_limit": 3, "sender_login_binding": False}},  # no directory here
        listeners=[
            {
                "name": "submit",
                "port": 0,
                "tls_cert_file": str(tls_files.cert),
                "tls_key_file": str(tls_files.key),
                "auth": True,
                "credentials_file": str(credentials),
            }
        ],
    )
    port = ing.port("submit")
    before = refusals("AUTH", "auth_throttled", listener="submit")

    def session(source: str) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30)
        s.starttls(context=tls_files.client_context())
        s.ehlo("guesser.example")
        return s

    s = session("127.0.0.1")
    assert [s.docmd(*auth_plain("relay1", p).split(" ", 1))[0] for p in ("a", "b")] == [535] * 2
    s.close()
    s = session("127.0.0.1")  # a new connection: the address still has its count
    assert s.docmd(*auth_plain("relay1", "c").split(" ", 1))[0] == 535
    # the limit is reached: even the right password is not checked now
    code, text = s.docmd(*auth_plain("relay1", "correct horse").split(" ", 1))
    assert (code, text.split()[0]) == (454, b"4.7.0")
    s.close()
    assert refusals("AUTH", "auth_throttled", listener="submit") == before + 1
    s = session("127.0.0.2")  # another client address is not throttled
    assert s.docmd(*auth_plain("relay1", "correct horse").split(" ", 1))[0] == 235
    s.close()
    # the checks ran on the AUTH pool, not on the threads that hash messages
    assert any(t.name.startswith(PasswordChecker.THREAD_PREFIX) for t in threading.enumerate())
