"""SMTP command lines and replies, pure: what a line says and how a reply is written.

No I/O and no session state here (:mod:`ingest.connection` reads and writes, :mod:`ingest.server`
decides). The texts are those aiosmtpd 1.4 answered, which clients and our tests know, with an
enhanced status code (RFC 2034) on every reply that lacks one.
"""

from __future__ import annotations

import re
from base64 import b64decode
from binascii import Error as B64Error
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from ingest.policy import Reply

# the longest line read as a command; longer ones are read to their end and answered 500
LINE_LIMIT = 16 * 1024
# RFC 5321 4.5.3.1.4 for most commands, more for the ESMTP parameters of MAIL/RCPT (DSN) and
# for AUTH's initial response
COMMAND_LIMIT = 512
ESMTP_LIMITS = {"MAIL": 2048, "RCPT": 2048, "AUTH": 12288}
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
BOGUS_LIMIT = 5  # unknown commands before the session is closed

LOGIN_USER_CHALLENGE = b"User Name\x00"
LOGIN_PASSWORD_CHALLENGE = b"Password\x00"

# default enhanced status code per reply code (RFC 2034, RFC 3463)
DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")

# HELP: the syntax of each command that has one (aiosmtpd's texts)
SYNTAX = {
    "AUTH": "AUTH <mechanism>",
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "MAIL": "MAIL FROM: <address>",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO: <address>",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}
_EXTENDED_SYNTAX = {"MAIL": " [SP <mail-parameters>]", "RCPT": " [SP <mail-parameters>]"}


def with_enhanced(text: str) -> str:
    """``text`` with the default enhanced status code for its reply code when it has none."""
    if len(text) > 4 and text[3] == " ":
        if not _HAS_ENHANCED.match(text, 4):
            enhanced = DEFAULT_ENHANCED.get(text[:3])
            if enhanced is not None:
                return f"{text[:3]} {enhanced} {text[4:]}"
    elif len(text) == 3:
        enhanced = DEFAULT_ENHANCED.get(text)
        if enhanced is not None:
            return f"{text} {enhanced}"
    return text


def reply_bytes(status: Reply | str | bytes) -> bytes:
    """One reply line, CRLF included."""
    if isinstance(status, Reply):
        return f"{status}\r\n".encode("utf-8", "surrogateescape")
    if isinstance(status, str):
        return with_enhanced(status).encode("utf-8", "surrogateescape") + b"\r\n"
    return status + b"\r\n"


def parse_line(line: bytes) -> tuple[str, str | None] | None:
    """(verb upper-cased, argument or None) of a command line (its line end included), or None
    when the line is empty or the verb not ASCII ("500 Error: bad syntax")."""
    line = line.rstrip(b"\r\n")
    if not line:
        return None
    verb_bytes, _, arg_bytes = line.partition(b" ")
    try:
        verb = verb_bytes.upper().decode("ascii")
    except UnicodeDecodeError:
        return None
    if not arg_bytes:
        return verb, None
    # arguments may be UTF-8 (SMTPUTF8) or anything: surrogateescape keeps the original bytes
    return verb, arg_bytes.strip().decode("utf-8", "surrogateescape")


def command_too_long(verb: str, line_length: int, *, esmtp: bool) -> bool:
    """``line_length``: the line without its line end."""
    limit = ESMTP_LIMITS.get(verb, COMMAND_LIMIT) if esmtp else COMMAND_LIMIT
    return line_length > limit


def ehlo_reply(hostname: str, max_size: int, *, starttls: bool, auth: bool) -> bytes:
    lines = [
        hostname,
        "PIPELINING",
        f"SIZE {max_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH PLAIN LOGIN")
    text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
    return text.encode("ascii")


def help_reply(arg: str | None, *, esmtp: bool, tls: bool) -> str:
    """HELP, or HELP <command>; STARTTLS is listed only where TLS is offered."""
    known = {k: v for k, v in SYNTAX.items() if tls or k != "STARTTLS"}
    code = 250
    if arg:
        text = known.get(arg.upper())
        if text is not None:
            if esmtp:
                text += _EXTENDED_SYNTAX.get(arg.upper(), "")
            return f"250 Syntax: {text}"
        code = 501
    return f"{code} Supported commands: {' '.join(sorted(known))}"


def vrfy_address(arg: str) -> str | None:
    """The address of ``VRFY <arg>``, or None when it does not parse."""
    address: Any
    try:
        if arg.lstrip().startswith("<"):
            address, _ = get_angle_addr(arg)
        else:
            address, _ = get_addr_spec(arg)
        return str(address.addr_spec)
    except (HeaderParseError, IndexError):  # the stdlib parser trips on some junk
        return None


def b64(blob: bytes | str) -> bytes | None:
    """Strict base64 (RFC 4954), None when it is not."""
    try:
        return b64decode(blob, validate=True)
    except (B64Error, ValueError):
        return None


def split_plain(blob: bytes) -> tuple[bytes, bytes] | None:
    """(login, password) of an AUTH PLAIN response ``authzid NUL login NUL password``."""
    parts = blob.split(b"\x00")
    if len(parts) != 3:
        return None
    return parts[1], parts[2]
