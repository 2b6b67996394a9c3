"""The SMTP edge from an untrusted client (issue 14, part A), against the real ingest on
loopback and real Kafka: hidden journal/NDR addresses in every spelling get exactly the reply an
unknown user gets, recipients are verified against the directory (file and a real slapd, whose
outage answers 451 4.4.3), routing local parts are refused, and an authenticated login sends only
as its own addresses."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import idna
import pytest

from ingest.auth import hash_password
from tests.fixtures.ingest import RawSMTP, RunningIngest, TlsFiles, message_events
from tests.fixtures.ldap import Slapd

pytestmark = pytest.mark.kafka

DIRECTORY = """
["alice@corp.example"]
aliases = ["a.smith@corp.example"]
login = "alice"
senders = ["team@corp.example"]

["bob@corp.example"]

["anna@xn--kln-sna.example"]

["relay1"]
senders = ["@corp.example"]
"""

# internal journaling on an IDN domain too, so A-label / U-label spellings are probed
EDGE: dict[str, Any] = {
    "organization": {"accepted_domains": ["corp.example", "köln.example"]},
    "journal": {
        "internal": {
            "enabled": True,
            "address": "journal-intern@köln.example",
            "ndr_address": "journal-ndr-intern@xn--kln-sna.example",
        }
    },
    "ingest": {"verify_recipients": True},
}
HIDDEN = [
    "journal-in@corp.example",
    "journal-ndr-in@corp.example",
    "journal-out@corp.example",
    "journal-ndr-out@corp.example",
    "journal-intern@köln.example",
    "journal-ndr-intern@xn--kln-sna.example",
]


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and c != "." else c for c in text)


def _other_label(domain: str) -> str:
    return idna.decode(domain) if "xn--" in domain else idna.encode(domain).decode()


# name -> (local, domain) -> the same address spelled differently
SPELLINGS: dict[str, Callable[[str, str], str]] = {
    "as is": lambda lp, d: f"{lp}@{d}",
    "upper case": lambda lp, d: f"{lp.upper()}@{d.upper()}",
    "quoted": lambda lp, d: f'"{lp}"@{d}',
    "quoted with escapes": lambda lp, d: '"' + "".join("\\" + c for c in lp) + f'"@{d}',
    "subaddress": lambda lp, d: f"{lp}+probe@{d}",
    "quoted subaddress": lambda lp, d: f'"{lp}+x y"@{d}',
    "fullwidth domain": lambda lp, d: f"{lp}@{_fullwidth(d)}",
    "ideographic full stop": lambda lp, d: f"{lp}@{d.replace('.', chr(0x3002))}",
    "fullwidth full stop": lambda lp, d: f"{lp}@{d.replace('.', chr(0xFF0E))}",
    "halfwidth ideographic full stop": lambda lp, d: f"{lp}@{d.replace('.', chr(0xFF61))}",
    "other IDNA label form": lambda lp, d: f"{lp}@{_other_label(d)}",
    "trailing dot": lambda lp, d: f"{lp}@{d}.",
    "trailing ideographic full stop": lambda lp, d: f"{lp}@{d}\u3002",
}


def directory_file(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "directory.toml"
    path.write_text(DIRECTORY)
    return {"backend": "file", "file": {"path": str(path)}}


def rcpt_replies(port: int, addresses: list[str]) -> list[tuple[int, str]]:
    """The RCPT reply of each address, one session, as an untrusted SMTPUTF8 client."""
    with RawSMTP(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO outsider.example")[0] == 250
        assert c.cmd("MAIL FROM:<outsider@example.net> SMTPUTF8")[0] == 250
        replies = [c.cmd(f"RCPT TO:<{a}>") for a in addresses]
        c.cmd("QUIT")
    return replies


def anonymised(reply: tuple[int, str]) -> tuple[int, str]:
    """The reply with the echoed address taken out."""
    code, text = reply
    return code, re.sub(r"<[^>]*>", "<address>", text)


def test_every_spelling_of_a_hidden_address_is_refused_like_an_unknown_user(
    ingest_factory: Callable[..., RunningIngest], tmp_path: Path
) -> None:
    ing = ingest_factory({**EDGE, "directory": directory_file(tmp_path)})
    for name, spell in SPELLINGS.items():
        probes: list[str] = []
        for hidden in HIDDEN:
            local, _, domain = hidden.rpartition("@")
            # the same spelling of a made-up user and of a listed one, on the same domain
            listed = "alice@corp.example" if domain == "corp.example" else "anna@köln.example"
            probes += [spell(local, domain), spell("nobody", domain), spell(*listed.split("@"))]
        replies = rcpt_replies(ing.port(), probes)
        for i in range(0, len(probes), 3):
            hidden_reply, unknown_reply, listed_reply = replies[i : i + 3]
            assert hidden_reply[0] >= 500, (name, probes[i], hidden_reply)
            # the same code, enhanced code and text: nothing tells a hidden address apart
            assert anonymised(hidden_reply) == anonymised(unknown_reply), (
                name,
                probes[i],
                hidden_reply,
                unknown_reply,
            )
            if hidden_reply[0] == 550 and hidden_reply[1].startswith("5.1.1"):
                assert listed_reply[0] == 250, (name, probes[i + 2], listed_reply)
            else:  # a spelling refused as syntax is refused for everyone
                assert listed_reply[0] == hidden_reply[0], (name, probes[i + 2], listed_reply)
    # the unknown user reply is Postfix's, hidden address or made up
    (reply,) = rcpt_replies(ing.port(), ["journal-in@corp.example"])
    assert reply == (
        550,
        "5.1.1 <journal-in@corp.example>: Recipient address rejected: User unknown",
    )


def test_listed_users_and_aliases_are_accepted_and_journaled(
    ingest_factory: Callable[..., RunningIngest], tmp_path: Path
) -> None:
    ing = ingest_factory({**EDGE, "directory": directory_file(tmp_path)})
    replies = rcpt_replies(
        ing.port(),
        [
            "alice@corp.example",
            "A.Smith+news@CORP.example",
            "bob@corp.example",
            "carol@corp.example",
            "postmaster@corp.example",  # not listed, reachable anyway (RFC 5321 4.5.1)
        ],
    )
    assert [code for code, _ in replies] == [250, 250, 250, 550, 250]
    assert replies[3][1].startswith("5.1.1")
    with smtplib.SMTP("127.0.0.1", ing.port()) as s:
        refused = s.sendmail("p@partner.example", ["bob@corp.example"], b"Subject: x\r\n\r\nhi\r\n")
    assert refused == {}
    (event,) = message_events(ing.config, min_count=1)
    assert [r["address"] for r in event["recipients"]] == ["bob@corp.example"]


def test_trusted_clients_skip_verification_and_reach_hidden_addresses(
    ingest_factory: Callable[..., RunningIngest], tmp_path: Path
) -> None:
    ing = ingest_factory(
        {
            **EDGE,
            "directory": directory_file(tmp_path),
            "organization": {**EDGE["organization"], "trusted_networks": ["127.0.0.0/8"]},
        }
    )
    replies = rcpt_replies(ing.port(), ["journal-in@corp.example", "carol@corp.example"])
    assert [code for code, _ in replies] == [250, 250]


def test_inline_mode_unknown_recipients_never_pass_rcpt(
    ingest_factory: Callable[..., RunningIngest], tmp_path: Path
) -> None:
    """No backscatter: with verification on, the inline listener refuses an unknown recipient at
    RCPT, so the relay never has a message for it (and never a DSN to a forged sender)."""
    hop = {"host": "127.0.0.1", "port": 25}
    ing = ingest_factory(
        {**EDGE, "directory": directory_file(tmp_path), "relay": {"inbound": hop, "outbound": hop}},
        listeners=[{"name": "mx", "port": 0, "relay": True}],
    )
    with smtplib.SMTP("127.0.0.1", ing.port()) as s:
        s.ehlo("outsider.example")
        s.mail("forged@victim.example")
        code, text = s.rcpt("nobody@corp.example")
        assert (code, text.split()[0]) == (550, b"5.1.1")
        assert s.rcpt("alice@corp.example")[0] == 250
        assert s.data(b"Subject: x\r\n\r\nhi\r\n")[0] == 250
    (event,) = message_events(ing.config, min_count=1)
    assert [r["address"] for r in event["recipients"]] == ["alice@corp.example"]


# -- routing local parts ---------------------------------------------------------------------------

ROUTED = [
    "alice%other.example@corp.example",
    "journal-in%corp.example@corp.example",
    "other.example!alice@corp.example",
    '"alice@other.example"@corp.example',
    "@corp.example,@relay.example:alice@corp.example",  # a source route
]


def test_routing_local_parts_are_refused_from_untrusted_clients(
    ingest_factory: Callable[..., RunningIngest], tmp_path: Path
) -> None:
    ing = ingest_factory({**EDGE, "directory": directory_file(tmp_path)})
    for address, (code, text) in zip(ROUTED, rcpt_replies(ing.port(), ROUTED), strict=True):
        assert (code, text.split()[0]) == (550, "5.1.3"), (address, text)
        assert "routing" in text


def test_routing_switch_and_trusted_clients(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    allowed = ingest_factory({"ingest": {"allow_untrusted_routing": True}})
    assert [c for c, _ in rcpt_replies(allowed.port(), ROUTED)] == [250] * len(ROUTED)
    trusted = ingest_factory({"organization": {"trusted_networks": ["127.0.0.0/8"]}})
    assert [c for c, _ in rcpt_replies(trusted.port(), ROUTED)] == [250] * len(ROUTED)


# -- LDAP verification -----------------------------------------------------------------------------


def test_ldap_verification_and_outage(
    ingest_factory: Callable[..., RunningIngest], slapd: Slapd
) -> None:
    slapd.add_user("dave", "dave@corp.example", aliases=["d.smith@corp.example"])
    slapd.add_user("jin", "journal-in@corp.example")  # a journal mailbox in the directory
    ing = ingest_factory(
        {
            "ingest": {"verify_recipients": True},
            # no cache: every RCPT asks slapd, so the outage shows at once
            "directory": {
                **slapd.directory_config(),
                "cache_ttl_seconds": 0,
                "negative_ttl_seconds": 0,
            },
        }
    )
    probes = ["dave@corp.example", "D.Smith+x@corp.example", "nobody@corp.example"]
    probes += ["journal-in@corp.example", '"journal-in"@corp.example']
    replies = rcpt_replies(ing.port(), probes)
    assert [c for c, _ in replies] == [250, 250, 550, 550, 550]
    # listed in the directory or not, a hidden address gets the unknown user's reply
    assert anonymised(replies[3]) == anonymised(replies[2])
    slapd.stop()
    replies = rcpt_replies(ing.port(), probes)
    assert {(c, t.split()[0]) for c, t in replies} == {(451, "4.4.3")}, replies
    slapd.start()
    assert rcpt_replies(ing.port(), probes[:1])[0][0] == 250


# -- sender-login binding --------------------------------------------------------------------------


@pytest.fixture
def submission(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles, tmp_path: Path
) -> RunningIngest:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "".join(f"{u}:{hash_password('pw-' + u, n=2**12)}\n" for u in ("alice", "relay1", "eve"))
    )
    listener = {
        "name": "submit",
        "port": 0,
        "tls_cert_file": str(tls_files.cert),
        "tls_key_file": str(tls_files.key),
        "auth": True,
        "credentials_file": str(credentials),
    }
    return ingest_factory({"directory": directory_file(tmp_path)}, listeners=[listener])


def mail_replies(
    ing: RunningIngest, tls_files: TlsFiles, login: str, senders: list[str]
) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", ing.port("submit")) as s:
        s.starttls(context=tls_files.client_context())
        s.login(login, "pw-" + login)
        out = []
        for sender in senders:
            out.append(s.mail(sender))
            s.rset()
    return out


def test_sender_login_binding(submission: RunningIngest, tls_files: TlsFiles) -> None:
    own = ["alice@corp.example", "A.Smith@corp.example", "alice+lists@CORP.example"]
    own += ["team@corp.example", ""]  # her senders entry; the null sender (bounces)
    assert [c for c, _ in mail_replies(submission, tls_files, "alice", own)] == [250] * 5
    (code, text), *_ = mail_replies(submission, tls_files, "alice", ["bob@corp.example"])
    assert (code, text) == (
        553,
        b"5.7.1 <bob@corp.example>: Sender address rejected: not owned by user alice",
    )
    # "@corp.example" in the senders list: a relay account for the whole domain
    replies = mail_replies(submission, tls_files, "relay1", ["bob@corp.example", "x@other.example"])
    assert [c for c, _ in replies] == [250, 553]
    # a login the directory does not know may send as nobody
    assert mail_replies(submission, tls_files, "eve", ["eve@corp.example"])[0][0] == 553


def test_sender_login_binding_with_ldap(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles, tmp_path: Path, slapd: Slapd
) -> None:
    slapd.add_user("dave", "dave@corp.example", aliases=["d.smith@corp.example"])
    credentials = tmp_path / "credentials"
    credentials.write_text(f"dave:{hash_password('pw-dave', n=2**12)}\n")
    listener = {
        "name": "submit",
        "port": 0,
        "tls_cert_file": str(tls_files.cert),
        "tls_key_file": str(tls_files.key),
        "auth": True,
        "credentials_file": str(credentials),
    }
    no_cache = {"cache_ttl_seconds": 0, "negative_ttl_seconds": 0}
    ing = ingest_factory(
        {"directory": {**slapd.directory_config(), **no_cache}}, listeners=[listener]
    )
    replies = mail_replies(
        ing, tls_files, "dave", ["dave@corp.example", "d.smith@corp.example", "bob@corp.example"]
    )
    assert [c for c, _ in replies] == [250, 250, 553]
    slapd.stop()
    (code, text), *_ = mail_replies(ing, tls_files, "dave", ["dave+new@corp.example"])
    assert (code, text.split()[0]) == (451, b"4.4.3")
