"""Ingest's pure policy decisions, headers and credentials: no server, no Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.auth import Credentials, CredentialsError, hash_password, verify_password
from ingest.headers import header_block, header_fields, selected_headers
from ingest.policy import (
    BUSY_BYTES,
    BUSY_MESSAGES,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_CLIENT,
    ConnectionLimiter,
    InflightBudget,
    Policy,
    Reply,
    SyntaxRefusal,
    split_path,
)
from ingest.proxy import ClientAddress, client_from_proxy, encode_v1, encode_v2, peer_address
from tests.fixtures.config import make_config


@pytest.fixture
def policy() -> Policy:
    return Policy(make_config({"ingest": {"max_recipients": 3, "max_message_size": 10_000}}))


def refusal(fn, *args, **kw) -> Reply:
    with pytest.raises(SyntaxRefusal) as info:
        fn(*args, **kw)
    return info.value.reply


@pytest.mark.parametrize(
    ("arg", "path", "words"),
    [
        ("FROM:<a@b.example>", "a@b.example", []),
        ("from: <a@b.example> SIZE=10", "a@b.example", ["SIZE=10"]),
        ("FROM:<>", "", []),
        ("FROM:a@b.example BODY=8BITMIME", "a@b.example", ["BODY=8BITMIME"]),
        ('FROM:<"x y>z"@b.example>', '"x y>z"@b.example', []),
        ("FROM:<@relay.example,@r2.example:a@b.example>", "a@b.example", []),
    ],
)
def test_split_path(arg: str, path: str, words: list[str]) -> None:
    assert split_path(arg, "FROM:") == (path, words)


@pytest.mark.parametrize(
    "arg", ["<a@b.example>", "FROM:<a@b.example", "FROM:<a@b>x", "FROM:", None]
)
def test_split_path_refuses_garbage(arg: str | None) -> None:
    assert refusal(split_path, arg, "FROM:").code == 501


def test_mail_records_every_parameter(policy: Policy) -> None:
    sender, params = policy.mail(
        "FROM:<Alice@Example.ORG> SIZE=1234 body=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2Bx "
        "AUTH=<alice@example.org>"
    )
    assert sender == "Alice@example.org"
    assert params.record() == {
        "size": 1234,
        "body": "8BITMIME",
        "smtputf8": True,
        "ret": "HDRS",
        "envid": "QQ+2Bx",
        "other": {"AUTH": "<alice@example.org>"},
    }


def test_null_sender_is_accepted(policy: Policy) -> None:
    assert policy.mail("FROM:<>")[0] == ""


@pytest.mark.parametrize(
    ("arg", "code", "enhanced"),
    [
        ("FROM:<a@b.example> SIZE=10001", 552, "5.3.4"),
        ("FROM:<not an address>", 501, "5.1.7"),
        ("FROM:<a@@b.example>", 501, "5.1.7"),
        ("FROM:<a@b.example> FOO=bar", 555, "5.5.4"),
        ("FROM:<a@b.example> BODY=BINARYMIME", 501, "5.5.4"),
        ("FROM:<a@b.example> RET=ALL", 501, "5.5.4"),
        ("FROM:<a@b.example> SIZE=x", 501, "5.5.4"),
        ("FROM:<a@b.example> SIZE=1 SIZE=2", 501, "5.5.4"),
        ("FROM:<ü@b.example>", 553, "5.6.7"),
    ],
)
def test_mail_refusals(policy: Policy, arg: str, code: int, enhanced: str) -> None:
    reply = refusal(policy.mail, arg)
    assert (reply.code, reply.enhanced) == (code, enhanced)


def test_utf8_sender_with_smtputf8(policy: Policy) -> None:
    assert policy.mail("FROM:<ü@b.example> SMTPUTF8")[0] == "ü@b.example"


def test_parameters_need_ehlo(policy: Policy) -> None:
    assert refusal(policy.mail, "FROM:<a@b.example> SIZE=1", esmtp=False).code == 501


def rcpt(policy: Policy, address: str, *, trusted: bool = False, accepted: int = 0, params=""):
    return policy.rcpt(
        f"TO:<{address}>{params}", smtputf8=False, accepted=accepted, trusted=trusted
    )


def test_rcpt_dsn_parameters(policy: Policy) -> None:
    address, params = rcpt(
        policy, "User@Corp.Example", params=" NOTIFY=success,delay ORCPT=rfc822;User+40corp"
    )
    assert address == "User@corp.example"
    assert params.notify == ["SUCCESS", "DELAY"]
    assert params.orcpt == "rfc822;User+40corp"


@pytest.mark.parametrize(
    "params", [" NOTIFY=NEVER,SUCCESS", " NOTIFY=SOMETIMES", " ORCPT=nosemicolon"]
)
def test_rcpt_bad_dsn_parameters(policy: Policy, params: str) -> None:
    assert refusal(rcpt, policy, "u@corp.example", params=params).code == 501


def test_relay_control(policy: Policy) -> None:
    # inbound: anyone may send to an accepted domain
    assert rcpt(policy, "u@corp.example")[0] == "u@corp.example"
    # external recipient from an untrusted client: denied, whatever sender it claims
    reply = refusal(rcpt, policy, "x@other.example")
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    # trusted (network, AUTH or relay listener): may relay out
    assert rcpt(policy, "x@other.example", trusted=True)[0] == "x@other.example"


def test_protected_addresses_look_like_unknown_users(policy: Policy) -> None:
    for address in ("journal-in@corp.example", "JOURNAL-NDR-OUT@corp.example"):
        reply = refusal(rcpt, policy, address)
        assert (reply.code, reply.enhanced) == (550, "5.1.1")
        assert "User unknown" in reply.text
    assert rcpt(policy, "journal-in@corp.example", trusted=True)[0] == "journal-in@corp.example"


def test_recipient_limit(policy: Policy) -> None:
    assert rcpt(policy, "u@corp.example", accepted=2)
    reply = refusal(rcpt, policy, "u@corp.example", accepted=3)
    assert (reply.code, reply.enhanced) == (452, "4.5.3")


def test_postmaster_without_domain(policy: Policy) -> None:
    assert rcpt(policy, "Postmaster")[0] == "postmaster@corp.example"


def test_rcpt_malformed(policy: Policy) -> None:
    assert refusal(rcpt, policy, "").enhanced == "5.1.3"
    assert refusal(rcpt, policy, "no-at-sign").code == 501


def test_trust(policy: Policy) -> None:
    assert policy.trusted("10.1.2.3", authenticated=False, listener_role="internet")
    assert not policy.trusted("192.0.2.1", authenticated=False, listener_role="internet")
    assert policy.trusted("192.0.2.1", authenticated=True, listener_role="internet")
    assert policy.trusted("192.0.2.1", authenticated=False, listener_role="relay")


def test_connection_limiter() -> None:
    lim = ConnectionLimiter(max_total=3, max_per_client=2)
    assert lim.open() is None and lim.bind("1.1.1.1") is None
    assert lim.open() is None and lim.bind("1.1.1.1") is None
    assert lim.open() is None
    assert lim.bind("1.1.1.1") == TOO_MANY_FROM_CLIENT
    assert lim.bind("2.2.2.2") is None
    assert lim.open() == TOO_MANY_CONNECTIONS
    lim.unbind("1.1.1.1")
    lim.close()
    assert lim.open() is None and lim.bind("1.1.1.1") is None
    assert TOO_MANY_CONNECTIONS.code == 421 and TOO_MANY_CONNECTIONS.enhanced == "4.7.0"


def test_inflight_budget() -> None:
    budget = InflightBudget(max_messages=2, max_bytes=100)
    assert budget.start_message() is None and budget.start_message() is None
    assert budget.start_message() == BUSY_MESSAGES
    assert budget.reserve(60) and not budget.reserve(41) and budget.reserve(40)
    budget.end_message()
    assert budget.start_message() == BUSY_BYTES
    budget.release(100)
    assert budget.start_message() is None


# -- headers ------------------------------------------------------------------------------------


def test_header_block_stops_at_the_first_empty_line() -> None:
    raw = b"Subject: a\r\nTo: b@c.example\r\n\r\nSubject: body, not a header\r\n"
    assert header_block(raw) == b"Subject: a\r\nTo: b@c.example\r\n"
    assert header_block(b"\r\nbody only\r\n") == b""
    assert header_block(b"Subject: no body\r\n") == b"Subject: no body\r\n"


def test_selected_headers_raw_unfolded_first_occurrence() -> None:
    raw = (
        b"Message-ID: <odd id@[weird]>\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n  and more\r\n"
        b"From: Caf\xc3\xa9 <a@example.org>\r\n"
        b"To: b@corp.example,\r\n\tc@corp.example\r\n"
        b"To: second@corp.example\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"X-MailJournal-Stamp: v1; copy=abc\r\n"
        b"X-MS-Journal-Report: \r\n"
        b"\r\n"
        b"Cc: in the body@corp.example\r\n"
    )
    h = selected_headers(raw)
    assert h == {
        "message_id": "<odd id@[weird]>",
        "subject": "=?utf-8?q?caf=C3=A9?=  and more",
        "from_": "Café <a@example.org>",
        "to": "b@corp.example,\tc@corp.example",
        "cc": None,
        "date": None,
        "auto_submitted": "auto-replied",
        "journal_stamp": "v1; copy=abc",
        "ms_journal_report": "",
    }


HEADER_SAMPLES = [
    b"Subject: a\r\nTo: b\r\n\r\nbody\r\n",
    b"From someone@example.org Tue Jul  1 10:00:00 2025\r\nSubject: mbox\r\n\r\n",
    b"Subject: a\r\nFrom misplaced line\r\nTo: b\r\n\r\n",
    b"Subject: a\r\nFrom last line\r\n\r\n",
    b"  continuation first\r\nSubject: a\r\n\r\n",
    b":no name\r\nSubject: a\r\n\r\n",
    b"Subject: a\r\nnot a header line\r\nTo: hidden\r\n\r\n",
    b"Subject: bare\rCR\nTo: bare LF\n\nbody",
    b"Subject:\r\n folded\r\n\tagain\r\nX-Empty:\r\nSubject: second\r\n\r\n",
    b"Subject : space before colon\r\nTo: b\r\n\r\n",
    b"Subject: 8bit caf\xc3\xa9 \xff\r\n\r\n",
    b"Subject: no blank line at all\r\n",
]


@pytest.mark.parametrize("raw", HEADER_SAMPLES)
def test_header_fields_read_like_the_email_parser(raw: bytes) -> None:
    """Our fast reader and email's compat32 parser see the same fields and values."""
    import re
    from email import policy as email_policy
    from email.parser import BytesHeaderParser

    from tests.strategies import obs_colons_closed

    # ingest accepts RFC 5322's obsolete blanks before a colon, compat32 does not
    msg = BytesHeaderParser(policy=email_policy.compat32).parsebytes(obs_colons_closed(raw))
    expected = [
        (
            name,
            re.sub(r"\r?\n(?=[ \t])|\r(?=[ \t])", "", value)
            .strip(" \t\r\n")
            .encode("ascii", "surrogateescape"),
        )
        for name, value in msg.raw_items()
    ]
    ours = [
        (name.decode(), value.strip(b" \t"))
        for name, value in header_fields(header_block(raw) or raw[:0])
    ]
    assert ours == expected


def test_selected_headers_latin1_bytes_do_not_break_the_event() -> None:
    h = selected_headers(b"Subject: caf\xe9\r\n\r\n")
    assert h["subject"] == "caf\ufffd"


# -- credentials --------------------------------------------------------------------------------


def test_password_hashes() -> None:
    encoded = hash_password("s3cret", n=2**10)
    assert encoded.startswith("$scrypt$n=1024,r=8,p=1$")
    assert verify_password("s3cret", encoded)
    assert not verify_password("S3cret", encoded)
    assert hash_password("s3cret", n=2**10) != encoded  # salted


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"# relays\n\nrelay1:{hash_password('pw1', n=2**10)}\n")
    creds = Credentials(path)
    assert creds.check(b"relay1", b"pw1") == "relay1"
    assert creds.check(b"relay1", b"pw2") is None
    assert creds.check(b"nobody", b"pw1") is None
    path.write_text(f"relay2:{hash_password('pw2', n=2**10)}\n")
    import os

    os.utime(path, ns=(1, 10**18))  # a different mtime: the file is read again
    assert creds.check(b"relay2", b"pw2") == "relay2"
    assert creds.check(b"relay1", b"pw1") is None
    path.write_text("broken line\n")
    os.utime(path, ns=(1, 2 * 10**18))
    with pytest.raises(CredentialsError):
        creds.check(b"relay2", b"pw2")


# -- PROXY protocol -----------------------------------------------------------------------------


def test_proxy_client_address() -> None:
    import asyncio

    from aiosmtpd.proxy_protocol import get_proxy

    async def parse(header: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(header + b"EHLO x\r\n")
        return await get_proxy(reader)

    lb = ClientAddress("10.0.0.5", 40000)
    v1 = asyncio.run(parse(encode_v1("192.0.2.7", 5555, "10.0.0.5", 25)))
    assert client_from_proxy(v1, lb) == ClientAddress("192.0.2.7", 5555, "10.0.0.5")
    v2 = asyncio.run(parse(encode_v2("2001:db8::7", 6666, "2001:db8::1", 25)))
    assert client_from_proxy(v2, lb) == ClientAddress("2001:db8::7", 6666, "10.0.0.5")
    local = asyncio.run(parse(encode_v2("0.0.0.0", 0, "0.0.0.0", 0, local=True)))
    assert client_from_proxy(local, lb) == lb
    assert peer_address(("::ffff:192.0.2.9", 25, 0, 0)) == ClientAddress("192.0.2.9", 25)


# -- the SMTP front owns its protocol machine ---------------------------------------------------


def test_ingest_uses_aiosmtpd_only_for_its_proxy_parser() -> None:
    """The front is ours (ingest.connection, ingest.commands): no subclass of aiosmtpd's SMTP,
    no private name of it, nothing gated on its version; only the PROXY header parser."""
    import ast
    from pathlib import Path

    used: set[str] = set()
    for path in Path(__file__).resolve().parent.parent.joinpath("ingest").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiosmtpd"):
                used.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                used.update(a.name for a in node.names if a.name.startswith("aiosmtpd"))
    assert used, "the PROXY parser comes from aiosmtpd"
    assert all(name.startswith("aiosmtpd.proxy_protocol.") for name in used), used
    assert not any(name.rpartition(".")[2].startswith("_") for name in used), used


def test_hash_password_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from mailjournal.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("pw with spaces\n"))
    assert main(["ingest", "hash-password", "--user", "relay9", "--password-stdin"]) == 0
    user, _, encoded = capsys.readouterr().out.strip().partition(":")
    assert user == "relay9" and verify_password("pw with spaces", encoded)
    assert main(["ingest"]) == 2  # --config is required to serve


def test_producer_config_keeps_the_durability_contract() -> None:
    from ingest.publisher import ingest_producer_config

    config = make_config(
        {
            "ingest": {"kafka_ack_timeout_seconds": 7.5},
            "kafka": {"producer": {"acks": "1", "enable.idempotence": False, "linger.ms": 20}},
        }
    )
    conf = ingest_producer_config(config)
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    assert conf["message.timeout.ms"] == 7500 and "delivery.timeout.ms" not in conf
    assert conf["linger.ms"] == 20  # a tunable: the operator's value wins
    # topics store uncompressed: a codec here would only be undone by the broker
    assert conf["compression.type"] == "none"


# -- the edge (issue 14): canonical protected addresses, verification, routing, sender logins ----


def test_protected_addresses_in_every_spelling(policy: Policy) -> None:
    for address in (
        '"journal-in"@corp.example',
        "journal-in+x@corp.example",
        "JOURNAL-IN@corp.example",
    ):
        reply = refusal(rcpt, policy, address)
        assert (reply.code, reply.enhanced, reply.reason) == (550, "5.1.1", "unknown_user")


def test_routing_local_parts_refused_unless_trusted_or_allowed(policy: Policy) -> None:
    routed = ["a%b.example@corp.example", "b.example!a@corp.example", '"a@b.example"@corp.example']
    for address in [*routed, "@relay.example:a@corp.example"]:
        reply = refusal(rcpt, policy, address)
        assert (reply.code, reply.enhanced, reply.reason) == (550, "5.1.3", "routing"), address
        assert rcpt(policy, address, trusted=True)
    allowing = Policy(make_config({"ingest": {"allow_untrusted_routing": True}}))
    for address in routed:
        assert rcpt(allowing, address)


def test_verification_lookup_decides_after_the_directory() -> None:
    policy = Policy(
        make_config(
            {
                "ingest": {"verify_recipients": True},
                "directory": {"backend": "file", "file": {"path": "users.toml"}},
            }
        )
    )
    assert policy.needs_lookup("x@corp.example", trusted=False)
    assert not policy.needs_lookup("x@corp.example", trusted=True)
    assert not policy.needs_lookup("Postmaster@corp.example", trusted=False)  # RFC 5321 4.5.1
    # with verification on, a hidden address passes RCPT parsing and is refused after the
    # lookup, so a directory outage answers it like every other address
    assert rcpt(policy, "journal-in@corp.example")
    assert policy.listed("journal-in@corp.example", None) == policy.listed("x@corp.example", None)
    outage = policy.listed("x@corp.example", None)
    assert outage is not None and (outage.code, outage.enhanced) == (451, "4.4.3")
    hidden = policy.listed("journal-in@corp.example", True)  # even when the directory lists it
    unknown = policy.listed("nobody@corp.example", False)
    assert hidden is not None and unknown is not None
    assert (hidden.code, hidden.enhanced) == (unknown.code, unknown.enhanced) == (550, "5.1.1")
    assert policy.listed("alice@corp.example", True) is None


def test_sender_owned(policy: Policy) -> None:
    allowed = ["alice@corp.example", "@partner.example"]
    assert policy.sender_owned("Alice+x@CORP.example", "alice", allowed) is None
    assert policy.sender_owned("anyone@partner.example", "alice", allowed) is None
    reply = policy.sender_owned("bob@corp.example", "alice", allowed)
    assert reply is not None and (reply.code, reply.enhanced) == (553, "5.7.1")
    assert policy.sender_owned("alice@corp.example", "ghost", None) is not None
    assert not policy.binds_sender("", authenticated=True)  # bounces
    assert not policy.binds_sender("a@corp.example", authenticated=False)
    assert policy.binds_sender("a@corp.example", authenticated=True)


def test_edge_settings_need_a_directory(tmp_path: Path) -> None:
    from mailjournal.config import ConfigError, files_read_by

    with pytest.raises(ConfigError, match="verify_recipients needs directory"):
        make_config({"ingest": {"verify_recipients": True}})
    cert = {"tls_cert_file": "c.pem", "tls_key_file": "k.pem", "credentials_file": "p"}
    auth = {"listeners": [{"name": "submit", "port": 587, "auth": True, **cert}]}
    with pytest.raises(ConfigError, match="sender_login_binding needs directory"):
        make_config({"ingest": auth})
    assert make_config({"ingest": {**auth, "sender_login_binding": False}})
    ldap = {"backend": "ldap", "ldap": {"base_dn": "dc=x", "password_file": "pw"}}
    cfg = make_config({"ingest": {"verify_recipients": True}, "directory": ldap})
    assert ("directory.ldap.password_file", Path("pw")) in files_read_by(cfg, "ingest")
