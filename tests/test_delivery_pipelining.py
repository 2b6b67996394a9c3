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

from delivery.outcomes import ResultClass
from delivery.smtp import SmtpClient, dot_stuffed
from tests.fixtures.smtp import SmtpSink, free_port, wait_until
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
