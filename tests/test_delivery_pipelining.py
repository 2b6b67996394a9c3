"""Delivery's SMTP client against a server that offers PIPELINING (Postfix's smtp-sink): RSET,
MAIL, RCPT and DATA go in one command group, the body keeps its exact bytes (dot-stuffing), a
session is reused, and a reused session the server dropped is replaced without losing the
message."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.outcomes import ResultClass
from mailjournal.smtp.wire import dot_stuffed
from tests.fixtures.smtp import CaptureServer, SmtpSink, free_port, wait_until
from tests.test_delivery_smtp import MAIL_FROM, RCPT, delivery_cfg

BODY = b"Subject: t\r\n\r\n.starts with a dot\r\nmiddle\r\n..two dots\r\nno final break"


def test_dot_stuffed_matches_rfc5321() -> None:
    assert dot_stuffed(b"") == b"\r\n.\r\n"
    assert dot_stuffed(b".a\r\n.\r\nb\r\n") == b"..a\r\n..\r\nb\r\n.\r\n"
    assert dot_stuffed(b"x\r\n.y") == b"x\r\n..y\r\n.\r\n"


@pytest.fixture
def dump() -> Iterator[Path]:
    # smtp-sink runs as nobody under root: a world-writable directory it can reach (not tmp_path,
    # whose parents are private)
    path = Path(tempfile.mkdtemp(prefix="sink-dump-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_pipelined_sends_reuse_one_session_and_keep_the_bytes(dump: Path) -> None:
    with SmtpSink(options=["-d", f"{dump}/%M."]) as sink:
        client = SmtpClient(delivery_cfg(sink.port), local_hostname="deliver.test")
        try:
            for _ in range(5):
                r = client.send(MAIL_FROM, RCPT, BODY)
                assert r.result_class is ResultClass.DELIVERED, r
            assert client.open_sessions == 1
        finally:
            client.close()
        assert wait_until(lambda: len(list(dump.iterdir())) == 5, 10)
    for f in dump.iterdir():
        # smtp-sink writes its Received: field first and an empty line last (LF line ends); in
        # between is the message, dots unstuffed, with the final CRLF delivery had to add
        assert f.read_bytes().endswith(BODY.replace(b"\r\n", b"\n") + b"\n\n")


def test_a_dropped_session_fails_its_pipelined_rset_and_is_replaced() -> None:
    port = free_port()
    with SmtpSink(port=port) as first:
        client = SmtpClient(delivery_cfg(first.port), local_hostname="deliver.test")
        assert client.send(MAIL_FROM, RCPT, BODY).code == 250
    try:
        with SmtpSink(port=port):
            r = client.send(MAIL_FROM, RCPT, BODY)
            assert r.code == 250, r
            assert client.open_sessions == 1
    finally:
        client.close()


def test_relay_envelope_is_pipelined_with_a_refused_recipient_and_a_reused_session() -> None:
    """The relay's multi-recipient transaction in one command group: each recipient gets its own
    result, the refused one does not stop the others, and the reused session's RSET rides in
    the next group."""
    rcpts = [("a@ext.example", ["NOTIFY=FAILURE"]), ("gone@ext.example", []), ("b@ext.example", [])]
    with CaptureServer(pipelining=True) as hop:
        hop.always("gone@ext.example", "550 5.1.1 no such user")
        client = SmtpClient(delivery_cfg(hop.port), local_hostname="relay.test")
        try:
            for _ in range(2):
                results = client.send_envelope(MAIL_FROM, ["BODY=8BITMIME"], rcpts, BODY)
                assert [(r.code, r.stage) for r in results] == [
                    (250, "data"),
                    (550, "rcpt"),
                    (250, "data"),
                ], results
            # nobody accepted: DATA is refused (or an empty message ends it), the session is
            # clean and is used again for the next transaction
            refused = client.send_envelope(MAIL_FROM, [], [("gone@ext.example", [])], BODY)
            assert [(r.code, r.stage) for r in refused] == [(550, "rcpt")]
            assert client.send_envelope(MAIL_FROM, [], [("a@ext.example", [])], BODY)[0].code == 250
            assert client.open_sessions == 1
        finally:
            client.close()
        got = hop.messages
        assert [m.rcpt_tos for m in got] == [["a@ext.example", "b@ext.example"]] * 2 + [
            ["a@ext.example"]
        ]
        assert all(m.data == BODY + b"\r\n" for m in got)
        assert {c for c, _ in hop.commands} == {1}
        assert [v for _, v in hop.commands].count("RSET") == 3  # every reuse, none on the first
