"""SMTP smuggling probes over raw sockets, STARTTLS and AUTH, PROXY protocol: real ingest, real
Kafka."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.auth import hash_password
from ingest.proxy import encode_v1, encode_v2
from tests.fixtures.ingest import RawSMTP, RunningIngest, TlsFiles, message_events
from tests.fixtures.trace import assert_event_of

pytestmark = pytest.mark.kafka

# bare-newline variants of the end of data (CVE-2023-51764 and friends)
PROBES = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r"]
SMUGGLED = (
    b"MAIL FROM:<ceo@corp.example>\r\n"
    b"RCPT TO:<victim@corp.example>\r\n"
    b"DATA\r\n"
    b"From: CEO <ceo@corp.example>\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
)


def smuggle(port: int, probe: bytes) -> tuple[int, str]:
    """One DATA carrying ``probe`` and a whole second transaction; returns the DATA reply."""
    with RawSMTP(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO attacker.example")[0] == 250
        assert c.cmd("MAIL FROM:<attacker@example.net>")[0] == 250
        assert c.cmd("RCPT TO:<victim@corp.example>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"From: attacker@example.net\r\nSubject: first\r\n\r\nhello" + probe + SMUGGLED)
        c.send(b".\r\n")
        reply = c.reply()
        # nothing else was answered: the smuggled commands were never read as commands
        assert c.cmd("QUIT")[0] == 221
        assert c.buf == b""
        return reply


def test_smuggling_probes_are_refused(ingest: RunningIngest) -> None:
    for probe in PROBES:
        code, text = smuggle(ingest.port(), probe)
        assert (code, text.split()[0]) == (550, "5.6.0"), (probe, text)
    assert message_events(ingest.config) == []


def test_smuggling_probes_are_one_message_when_normalising(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"ingest": {"bare_newline": "normalize"}})
    ids = []
    for probe in PROBES:
        code, text = smuggle(ing.port(), probe)
        assert code == 250, (probe, text)
        ids.append(text.rsplit(" ", 1)[1])
    events = message_events(ing.config, min_count=len(PROBES))
    assert sorted(e["event_id"] for e in events) == sorted(ids)  # one event per DATA
    for event in events:
        assert event["mail_from"] == "attacker@example.net"  # never the smuggled sender
        assert b"wire the money" in event["raw"]  # the smuggled part stayed inside
        raw = event["raw"]
        assert raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n")


def test_clean_crlf_messages_pass_unchanged_when_normalising(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory({"ingest": {"bare_newline": "normalize"}})
    message = b"Subject: clean\r\n\r\n.dot\r\nline\r\n"
    with smtplib.SMTP("127.0.0.1", ing.port()) as s:
        s.sendmail("a@example.org", ["u@corp.example"], message)
    (event,) = message_events(ing.config, min_count=1)
    assert_event_of(event, message)


# -- STARTTLS and AUTH ----------------------------------------------------------------------------


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials"
    path.write_text(f"relay1:{hash_password('correct horse', n=2**12)}\n")
    return path


NO_SENDER_BINDING = {"ingest": {"sender_login_binding": False}}


def tls_listener(tls_files: TlsFiles, **extra: object) -> dict[str, object]:
    return {
        "name": "submit",
        "port": 0,
        "tls_cert_file": str(tls_files.cert),
        "tls_key_file": str(tls_files.key),
        **extra,
    }


def test_starttls_and_auth(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles, credentials: Path
) -> None:
    ing = ingest_factory(
        NO_SENDER_BINDING,  # no directory here; sender-login binding: tests/test_ingest_edge.py
        listeners=[tls_listener(tls_files, auth=True, credentials_file=str(credentials))],
    )
    port = ing.port("submit")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="laptop.corp.example") as s:
        code, features = s.ehlo()
        assert b"STARTTLS" in features and b"AUTH" not in features
        # AUTH before TLS: refused (RFC 4954 4: 538 encryption required)
        code, text = s.docmd(
            "AUTH", "PLAIN " + base64.b64encode(b"\0relay1\0correct horse").decode()
        )
        assert (code, text.split()[0]) == (538, b"5.7.11")
        # an untrusted, unauthenticated client may not relay
        s.mail("u@corp.example")
        assert s.rcpt("x@other.example")[0] == 554
        s.rset()
        s.starttls(context=tls_files.client_context())
        code, features = s.ehlo()
        assert b"AUTH PLAIN LOGIN" in features and b"STARTTLS" not in features
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            s.login("relay1", "wrong")
        assert bad.value.smtp_code == 535
        s.login("relay1", "correct horse")
        refused = s.sendmail("u@corp.example", ["x@other.example"], b"Subject: out\r\n\r\nhi\r\n")
        assert refused == {}
    (event,) = message_events(ing.config, min_count=1)
    assert event["auth_user"] == "relay1"
    assert event["tls"] is not None and event["tls"]["version"].startswith("TLSv1.")
    assert event["tls"]["cipher"]
    assert event["recipients"][0]["address"] == "x@other.example"
    assert event["client"]["helo"] == "laptop.corp.example"


def test_auth_login_mechanism(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles, credentials: Path
) -> None:
    ing = ingest_factory(
        NO_SENDER_BINDING,  # no directory here; sender-login binding: tests/test_ingest_edge.py
        listeners=[tls_listener(tls_files, auth=True, credentials_file=str(credentials))],
    )
    with smtplib.SMTP("127.0.0.1", ing.port("submit")) as s:
        s.starttls(context=tls_files.client_context())
        s.ehlo()
        s.user, s.password = "relay1", "correct horse"
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235


def test_require_starttls(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles
) -> None:
    ing = ingest_factory(listeners=[tls_listener(tls_files, require_starttls=True)])
    with RawSMTP(ing.port("submit")) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO x.example")[0] == 250
        code, text = c.cmd("MAIL FROM:<a@example.org>")
        assert (code, text.split()[0]) == (530, "5.7.0")
    with smtplib.SMTP("127.0.0.1", ing.port("submit")) as s:
        s.starttls(context=tls_files.client_context())
        assert s.sendmail("a@example.org", ["u@corp.example"], b"Subject: t\r\n\r\nx\r\n") == {}
    (event,) = message_events(ing.config, min_count=1)
    assert event["tls"] is not None and event["auth_user"] is None


def test_auth_not_offered_without_credentials(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles
) -> None:
    ing = ingest_factory(listeners=[tls_listener(tls_files)])
    with smtplib.SMTP("127.0.0.1", ing.port("submit")) as s:
        s.starttls(context=tls_files.client_context())
        assert b"AUTH" not in s.ehlo()[1]
        assert s.docmd("AUTH", "PLAIN AHgAeQ==")[0] == 503


def test_plaintext_injection_before_starttls_is_discarded(
    ingest_factory: Callable[..., RunningIngest], tls_files: TlsFiles
) -> None:
    """Commands pipelined after STARTTLS in plaintext must not run inside TLS (CVE-2011-0411)."""
    ing = ingest_factory(listeners=[tls_listener(tls_files)])
    sock = socket.create_connection(("127.0.0.1", ing.port("submit")), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO x.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n")
    assert f.readline().startswith(b"220")
    tls = tls_files.client_context().wrap_socket(sock, server_hostname="localhost")
    tls.sendall(b"NOOP\r\n")
    reply = tls.recv(1024)
    assert reply == b"250 2.0.0 OK\r\n", reply  # the NOOP's reply, nothing for the injection
    tls.close()


# -- PROXY protocol -------------------------------------------------------------------------------

# the balancer is the loopback peer of these tests
LB_LISTENER = {
    "name": "lb",
    "port": 0,
    "proxy_protocol": True,
    "proxy_protocol_peers": ["127.0.0.1/32"],
}


def test_proxy_protocol_v1_and_v2_set_the_client(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory(listeners=[LB_LISTENER])
    ids = {}
    for version, header in (
        ("v1", encode_v1("198.51.100.7", 40001, "10.0.0.10", 25)),
        ("v2", encode_v2("2001:db8::42", 40002, "2001:db8::1", 25)),
    ):
        with RawSMTP(ing.port("lb"), preamble=header) as c:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO real-client.example")[0] == 250
            assert c.cmd("MAIL FROM:<a@example.net>")[0] == 250
            # the real client is untrusted: relaying out is refused
            assert c.cmd("RCPT TO:<x@other.example>")[0] == 554
            assert c.cmd("RCPT TO:<u@corp.example>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            code, text = c.cmd(f"Subject: {version}\r\n\r\nx\r\n.")
            assert code == 250
            ids[version] = text.rsplit(" ", 1)[1]
    events = {e["event_id"]: e for e in message_events(ing.config, min_count=2)}
    assert events[ids["v1"]]["client"] == {
        "ip": "198.51.100.7",
        "port": 40001,
        "helo": "real-client.example",
        "proxied_by": "127.0.0.1",
    }
    assert events[ids["v2"]]["client"] == {
        "ip": "2001:db8::42",
        "port": 40002,
        "helo": "real-client.example",
        "proxied_by": "127.0.0.1",
    }


def test_proxy_protocol_trust_follows_the_real_client(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory(listeners=[LB_LISTENER])
    with RawSMTP(ing.port("lb"), preamble=encode_v2("10.1.2.3", 5000, "10.0.0.10", 25)) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO inside.corp.example")[0] == 250
        assert c.cmd("MAIL FROM:<u@corp.example>")[0] == 250
        assert c.cmd("RCPT TO:<x@other.example>")[0] == 250  # 10/8 is a trusted network


def test_proxy_listener_requires_the_header(ingest_factory: Callable[..., RunningIngest]) -> None:
    ing = ingest_factory(listeners=[LB_LISTENER])
    with RawSMTP(ing.port("lb"), preamble=b"EHLO sneaky.example\r\n") as c:
        assert c.closed(timeout=5)
        assert c.buf == b""  # not even a banner


def proxy_peer_refusals(listener: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "mailjournal_ingest_proxy_peer_refused_total", {"listener": listener}
    )
    return value or 0.0


def closed_without_a_word(sock: socket.socket, timeout: float = 5.0) -> bool:
    """The server closed without sending anything: EOF, or a reset (closing a socket whose
    received bytes were never read makes the kernel answer RST)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_proxy_header_only_from_the_listed_peers(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    """Only 127.0.0.2 is the balancer: a PROXY header from 127.0.0.1 claiming a trusted client
    (a pod or node port reached directly) is never read; the connection is closed without a
    banner and counted. The same header from the listed peer is believed."""
    ing = ingest_factory(
        listeners=[{**LB_LISTENER, "proxy_protocol_peers": ["127.0.0.2/32", "192.0.2.0/24"]}]
    )
    header = encode_v1("10.1.2.3", 5000, "10.0.0.10", 25)  # 10/8 is a trusted network
    before = proxy_peer_refusals("lb")
    with RawSMTP(ing.port("lb"), preamble=header) as c:
        assert closed_without_a_word(c.sock)  # not even a banner
    assert proxy_peer_refusals("lb") == before + 1
    sock = socket.create_connection(
        ("127.0.0.1", ing.port("lb")), timeout=10, source_address=("127.0.0.2", 0)
    )
    c = RawSMTP.__new__(RawSMTP)
    c.sock, c.buf = sock, b""
    with c:
        c.send(header)
        assert c.reply()[0] == 220
        assert c.cmd("EHLO inside.corp.example")[0] == 250
        assert c.cmd("MAIL FROM:<u@corp.example>")[0] == 250
        assert c.cmd("RCPT TO:<x@other.example>")[0] == 250  # the claimed trusted client
        assert c.cmd("DATA")[0] == 354
        assert c.cmd("Subject: via the balancer\r\n\r\nx\r\n.")[0] == 250
    assert proxy_peer_refusals("lb") == before + 1
    (event,) = message_events(ing.config, min_count=1)
    assert event["client"]["ip"] == "10.1.2.3"
    assert event["client"]["proxied_by"] == "127.0.0.2"


def test_proxy_protocol_without_peers_is_refused_by_the_config() -> None:
    from mailjournal.config import ConfigError, load_config_dict
    from tests.fixtures.config import BASE, deep_merge

    lst = {"name": "lb", "port": 2525, "proxy_protocol": True}
    with pytest.raises(ConfigError) as err:
        load_config_dict(deep_merge(BASE, {"ingest": {"listeners": [lst]}}))
    assert "ingest.listeners.0" in str(err.value) and "proxy_protocol_peers" in str(err.value)
    lst = {"name": "lb", "port": 2525, "proxy_protocol_peers": ["10.0.0.0/24"]}
    with pytest.raises(ConfigError) as err:
        load_config_dict(deep_merge(BASE, {"ingest": {"listeners": [lst]}}))
    assert "proxy_protocol is false" in str(err.value)


def test_per_client_limit_counts_the_proxied_client(
    ingest_factory: Callable[..., RunningIngest],
) -> None:
    ing = ingest_factory(
        {"ingest": {"max_connections_per_client": 1}},
        listeners=[LB_LISTENER],
    )
    a = RawSMTP(ing.port("lb"), preamble=encode_v1("192.0.2.1", 1111, "10.0.0.10", 25))
    b = RawSMTP(ing.port("lb"), preamble=encode_v1("192.0.2.2", 2222, "10.0.0.10", 25))
    try:
        assert a.reply()[0] == 220 and b.reply()[0] == 220  # same balancer, two clients
        with RawSMTP(ing.port("lb"), preamble=encode_v1("192.0.2.1", 3333, "10.0.0.10", 25)) as c:
            code, text = c.reply()
            assert (code, text.split()[0]) == (421, "4.7.0")
    finally:
        a.close()
        b.close()


def test_tls_context_is_modern(tls_files: TlsFiles) -> None:
    from ingest.server import ListenerRuntime
    from mailjournal.config import ListenerConfig

    rt = ListenerRuntime(
        ListenerConfig(name="x", port=0, tls_cert_file=tls_files.cert, tls_key_file=tls_files.key)
    )
    assert rt.tls_context is not None
    assert rt.tls_context.minimum_version >= ssl.TLSVersion.TLSv1_2
