"""The pure half of the SMTP front (ingest.commands): command lines and reply texts."""

from __future__ import annotations

import base64

from ingest.commands import (
    b64,
    command_too_long,
    ehlo_reply,
    help_reply,
    parse_line,
    reply_bytes,
    split_plain,
    vrfy_address,
    with_enhanced,
)
from ingest.policy import Reply


def test_parse_line() -> None:
    assert parse_line(b"mail FROM:<a@b>\r\n") == ("MAIL", "FROM:<a@b>")
    assert parse_line(b"QUIT\n") == ("QUIT", None)  # a bare LF ends a command line too
    assert parse_line(b"EHLO  spaced  \r\n") == ("EHLO", "spaced")
    assert parse_line(b"\r\n") is None
    assert parse_line(b"\xffHELO x\r\n") is None  # the verb must be ASCII
    verb, arg = parse_line("RCPT TO:<jörg@b>\r\n".encode()) or ("", None)
    assert verb == "RCPT" and arg == "TO:<jörg@b>"
    _, raw = parse_line(b"RCPT TO:<\xff@b>\r\n") or ("", None)
    assert raw is not None and raw.encode("utf-8", "surrogateescape") == b"TO:<\xff@b>"


def test_command_limits() -> None:
    assert not command_too_long("NOOP", 512, esmtp=True)
    assert command_too_long("NOOP", 513, esmtp=True)
    assert not command_too_long("MAIL", 2048, esmtp=True)
    assert command_too_long("MAIL", 2049, esmtp=True)
    assert command_too_long("MAIL", 513, esmtp=False)  # parameters need EHLO
    assert not command_too_long("AUTH", 12288, esmtp=True)


def test_enhanced_codes_added_only_when_missing() -> None:
    assert with_enhanced("250 OK") == "250 2.0.0 OK"
    assert with_enhanced("250 2.1.0 Sender ok") == "250 2.1.0 Sender ok"
    assert with_enhanced("503 Error: send HELO first") == "503 5.5.1 Error: send HELO first"
    assert with_enhanced("221") == "221 2.0.0"
    assert with_enhanced("220 host ESMTP") == "220 host ESMTP"  # no default for 220
    assert reply_bytes(Reply(451, "4.3.0", "Later", "x")) == b"451 4.3.0 Later\r\n"
    assert reply_bytes(b"334 ") == b"334 \r\n"


def test_ehlo_and_help() -> None:
    plain = ehlo_reply("mx.example", 1000, starttls=True, auth=False)
    assert plain.startswith(b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n")
    assert plain.endswith(b"250-DSN\r\n250 STARTTLS\r\n")
    assert ehlo_reply("mx", 1, starttls=False, auth=True).endswith(b"250 AUTH PLAIN LOGIN\r\n")
    assert "STARTTLS" not in help_reply(None, esmtp=True, tls=False)
    assert help_reply(None, esmtp=True, tls=True).startswith("250 Supported commands: AUTH DATA")
    assert help_reply("mail", esmtp=True, tls=False).endswith("<address> [SP <mail-parameters>]")
    assert help_reply("MAIL", esmtp=False, tls=False) == "250 Syntax: MAIL FROM: <address>"
    assert help_reply("BOGUS", esmtp=True, tls=False).startswith("501 Supported commands:")


def test_vrfy_and_auth_blobs() -> None:
    assert vrfy_address("<user@corp.example>") == "user@corp.example"
    assert vrfy_address("user@corp.example") == "user@corp.example"
    assert vrfy_address("@") is None
    assert vrfy_address('"') is None  # raised inside the stdlib parser: answered, not a crash
    assert b64(base64.b64encode(b"\x00u\x00p")) == b"\x00u\x00p"
    assert b64(b"not base64!") is None
    assert split_plain(b"\x00user\x00pw") == (b"user", b"pw")
    assert split_plain(b"user\x00pw") is None
