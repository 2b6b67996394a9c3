"""Hostile SMTP clients against the real ingest server and the session Kafka: the cases the ingest
tests do not already cover (NUL bytes, early talkers, 1,001 recipients, SIZE lies, a multi-MB
header block, a one-byte-per-second client, a connection flood while another client is served,
pipelining abuse, overlong commands). Each ends by checking what reached Kafka."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.fixtures.ingest import RawSMTP, RunningIngest, message_events
from tests.fixtures.trace import assert_event_of

pytestmark = pytest.mark.kafka


def codes(reply: tuple[int, str]) -> tuple[int, str]:
    code, text = reply
    return code, text.split(" ", 1)[0]


def envelope(c: RawSMTP, sender: str, *rcpts: str) -> None:
    assert c.reply()[0] == 220
    assert c.cmd("EHLO client.example")[0] == 250
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for rcpt in rcpts:
        assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250


def served(port: int, source: str = "127.0.0.1", subject: str = "ok") -> int:
    """One complete clean transaction from ``source``; returns the final reply code."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    c = RawSMTP.__new__(RawSMTP)
    c.sock, c.buf = sock, b""
    with c:
        first = c.reply()[0]
        if first != 220:
            return first
        c.cmd("EHLO ok.example")
        c.cmd("MAIL FROM:<ok@example.org>")
        c.cmd("RCPT TO:<u@corp.example>")
        c.cmd("DATA")
        return c.cmd(f"Subject: {subject}\r\n\r\nfine\r\n.".encode())[0]


def test_nul_bytes_in_data_are_kept_and_in_commands_refused(ingest: RunningIngest) -> None:
    body = b"Subject: nul\x00here\r\n\r\nbefore\x00after\r\n\x00\r\n"
    with RawSMTP(ingest.port()) as c:
        envelope(c, "a@example.org", "u@corp.example")
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(body + b".")[0] == 250
        # a NUL inside an address is no address
        assert c.cmd(b"MAIL FROM:<a\x00b@example.org>")[0] == 501
        assert c.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        assert c.cmd(b"RCPT TO:<u\x00@corp.example>")[0] == 501
        assert c.cmd("QUIT")[0] == 221
    (event,) = message_events(ingest.config, min_count=1)
    assert_event_of(event, body)  # journaled as received: the archive is evidence


def test_commands_before_the_greeting_do_not_make_a_message(ingest: RunningIngest) -> None:
    """An early talker (spambots, smuggling kits) pipelines a whole transaction at connect."""
    early = (
        b"EHLO early.example\r\nMAIL FROM:<spam@example.net>\r\nRCPT TO:<u@corp.example>\r\n"
        b"DATA\r\nSubject: early\r\n\r\nspam\r\n.\r\nQUIT\r\n"
    )
    with RawSMTP(ingest.port(), preamble=early) as c:
        replies = []
        with pytest.raises(ConnectionError):
            while True:
                replies.append(c.reply())
    assert replies[0][0] == 220
    # either refused outright or handled as an ordinary (bounded) session; never a crash or hang
    assert all(code < 600 for code, _ in replies)
    accepted = [r for r in replies if r[0] == 250 and "queued" in r[1].lower()]
    events = message_events(ingest.config)
    assert len(events) == len(accepted)
    # the server is still fine for the next client
    assert served(ingest.port()) == 250


def test_one_thousand_and_one_recipients(ingest: RunningIngest) -> None:
    limit = ingest.config.ingest.max_recipients
    rcpts = [f"user{i}@corp.example" for i in range(1001)]
    with RawSMTP(ingest.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO many.example")[0] == 250
        assert c.cmd("MAIL FROM:<bulk@example.org>")[0] == 250
        # pipelined in one write (RFC 2920), then read back in order
        c.send(b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
        got = [codes(c.reply()) for _ in rcpts]
        assert got[:limit] == [(250, "2.1.5")] * limit
        assert set(got[limit:]) == {(452, "4.5.3")}
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(b"Subject: many\r\n\r\nx\r\n.")[0] == 250
    (event,) = message_events(ingest.config, min_count=1)
    assert [r["address"] for r in event["recipients"]] == rcpts[:limit]


def test_size_lie_declared_small_sent_huge(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory({"ingest": {"max_message_size": 2 * 1024 * 1024}})
    chunk = (b"A" * 998 + b"\r\n") * 1024  # 1 MB
    with RawSMTP(ing.port()) as c:
        envelope_ok = c.reply()[0] == 220 and c.cmd("EHLO liar.example")[0] == 250
        assert envelope_ok
        assert c.cmd("MAIL FROM:<liar@example.org> SIZE=100")[0] == 250
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        # 12 MB against a 2 MB limit, while another client must still be served
        other: list[int] = []
        t = threading.Thread(target=lambda: other.append(served(ing.port(), subject="other")))
        c.send(b"Subject: lie\r\n\r\n")
        for i in range(12):
            c.send(chunk)
            if i == 3:
                t.start()
        c.send(b".\r\n")
        assert codes(c.reply()) == (552, "5.3.4")
        t.join(30)
        assert other == [250]
        # the liar's session goes on, and an honest message afterwards is fine
        assert c.cmd("MAIL FROM:<liar@example.org> SIZE=30")[0] == 250
        assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(b"Subject: honest\r\n\r\nx\r\n.")[0] == 250
    subjects = sorted(e["headers"]["subject"] for e in message_events(ing.config, min_count=2))
    assert subjects == ["honest", "other"]


def test_header_block_of_several_megabytes(ingest: RunningIngest) -> None:
    """4 MB of header lines and a 1 MB folded header: accepted in bounded time, stored unchanged;
    the fields ingest extracts are read from the first 256 KB of the block only (by design: a
    Subject buried under megabytes of fields is left out of the event, never a crash)."""
    filler = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"f" * 60) for i in range(50_000))
    folded = b"X-Long: " + b"\r\n ".join(b"part%06d" % i for i in range(100_000)) + b"\r\n"
    raw = (
        b"From: big@example.org\r\nSubject: big headers\r\nMessage-ID: <big@h>\r\n"
        + filler
        + folded
        + b"Date: buried under the rest\r\n\r\nbody\r\n"
    )
    assert len(raw) > 4 * 1024 * 1024
    with RawSMTP(ingest.port()) as c:
        envelope(c, "big@example.org", "u@corp.example")
        assert c.cmd("DATA")[0] == 354
        started = time.monotonic()
        c.send(raw)
        assert c.cmd(b".")[0] == 250
        elapsed = time.monotonic() - started
    (event,) = message_events(ingest.config, min_count=1, timeout=60)
    assert_event_of(event, raw)
    headers = event["headers"]
    assert (headers["subject"], headers["message_id"]) == ("big headers", "<big@h>")
    assert headers["date"] is None  # past the extraction window
    print(f"\n{len(raw) / 1e6:.1f} MB header block accepted in {elapsed:.2f} s")
    assert elapsed < 20


def test_one_byte_per_second_client_is_cut_and_its_slot_freed(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    """A slowloris never completes a command inside the command timeout: it is answered 421 and
    closed, and the slot it held serves someone else; meanwhile a normal client is served."""
    ing = ingest_factory(
        {
            "ingest": {
                "command_timeout_seconds": 3,
                "max_connections": 2,
                "max_connections_per_client": 2,
            }
        }
    )
    slow = RawSMTP(ing.port())
    try:
        assert slow.reply()[0] == 220
        started = time.monotonic()  # the command timeout runs from here, not from the next byte
        assert served(ing.port(), subject="beside the slow one") == 250
        closed = False
        for byte in b"EHLO slow.example.with.a.long.name\r\n":
            try:
                slow.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if slow.closed(timeout=1.0):
                closed = True
                break
        assert closed, "a one-byte-per-second client was never cut"
        assert 2.5 < time.monotonic() - started < 8
        assert slow.buf.startswith(b"421 4.4.2 ")
    finally:
        slow.close()
    # both slots are free again: two clients at once are served
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(served(ing.port()))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [250, 250]


def test_connection_flood_past_the_limits_keeps_serving_others(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"ingest": {"max_connections": 40, "max_connections_per_client": 10}})
    flood: list[RawSMTP] = []
    greetings: list[int] = []
    try:
        for _ in range(60):  # one address opens 60 connections and sits on them
            c = RawSMTP(ing.port(), timeout=10)
            flood.append(c)
            greetings.append(c.reply()[0])
        assert greetings.count(220) == 10 and greetings.count(421) == 50
        # other clients (other loopback addresses) are still served while the flood holds on
        for n in range(2, 6):
            assert served(ing.port(), source=f"127.0.0.{n}", subject=f"from .{n}") == 250
    finally:
        for c in flood:
            c.close()
    assert len(message_events(ing.config, min_count=4)) == 4


def test_pipelining_abuse_without_ehlo_and_data_before_354(ing_plain: RunningIngest) -> None:
    """Commands pipelined past DATA by a client that never waited for 354 (and one that never
    said EHLO, so pipelining was never offered): every command is answered in order, the message
    text after DATA is data, not commands, and exactly the honest transaction is stored."""
    port = ing_plain.port()
    with RawSMTP(port) as c:
        assert c.reply()[0] == 220
        c.send(
            b"HELO nopipe.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<u@corp.example>\r\n"
            b"DATA\r\nSubject: pipelined\r\n\r\nRCPT TO:<x@other.example>\r\n.\r\nNOOP\r\n"
        )
        got = [c.reply()[0] for _ in range(6)]
        assert got == [250, 250, 250, 354, 250, 250]
    (event,) = message_events(ing_plain.config, min_count=1)
    assert_event_of(event, b"Subject: pipelined\r\n\r\nRCPT TO:<x@other.example>\r\n")
    assert [r["address"] for r in event["recipients"]] == ["u@corp.example"]


def test_overlong_commands_are_refused_and_the_session_survives(ing_plain: RunningIngest) -> None:
    with RawSMTP(ing_plain.port()) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO long.example")[0] == 250
        assert codes(c.cmd(b"NOOP " + b"x" * 600))[0] == 500
        assert codes(c.cmd(b"MAIL FROM:<" + b"a" * 70_000 + b"@example.org>"))[0] == 500
        # a command line of 1 MB with no newline at all, then its end
        c.send(b"X" * 1024 * 1024 + b"\r\n")
        assert c.reply()[0] == 500
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert message_events(ing_plain.config) == []


@pytest.fixture
def ing_plain(ingest: RunningIngest) -> RunningIngest:
    return ingest
