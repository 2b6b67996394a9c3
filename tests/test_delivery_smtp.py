"""The SMTP client of delivery against real servers on loopback: session reuse with RSET,
STARTTLS (off / opportunistic / required, certificate verified), AUTH, error classes, and the
report's headers surviving hostile input on the wire."""

from __future__ import annotations

import email
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
import trustme

from delivery.report import build_report, outgoing_message
from mailjournal.config import DeliveryConfig
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.outcomes import ResultClass
from schemas import JOURNAL_COPY, decode, encode
from tests.fixtures.config import make_config
from tests.fixtures.delivery import make_copy
from tests.fixtures.smtp import CaptureServer, free_port

MAIL_FROM = "journal-ndr-in@corp.example"
RCPT = "journal-in@corp.example"
DATA = b"Subject: t\r\n\r\nbody\r\n"


def delivery_cfg(port: int, **smart_host: Any) -> DeliveryConfig:
    return make_config(
        {
            "delivery": {
                "smart_host": {"host": "127.0.0.1", "port": port, **smart_host},
                "connect_timeout_seconds": 3,
                "command_timeout_seconds": 5,
            }
        }
    ).delivery


@pytest.fixture
def client_for() -> Iterator[Callable[..., SmtpClient]]:
    clients: list[SmtpClient] = []

    def make(port: int, **smart_host: Any) -> SmtpClient:
        c = SmtpClient(delivery_cfg(port, **smart_host), local_hostname="deliver.test")
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def test_sessions_are_reused_with_rset(smtp_capture: CaptureServer, client_for):
    client = client_for(smtp_capture.port)
    for _ in range(5):
        r = client.send(MAIL_FROM, RCPT, DATA)
        assert r.result_class is ResultClass.DELIVERED, r
    assert smtp_capture.connections == 1
    verbs = [v for _, v in smtp_capture.commands]
    assert verbs.count("RSET") == 4 and verbs.count("DATA") == 5
    assert [m.data for m in smtp_capture.messages] == [DATA] * 5
    assert client.open_sessions == 1


def test_a_dropped_idle_session_is_replaced_before_the_transaction(client_for):
    port = free_port()
    with CaptureServer(port=port) as first:
        client = client_for(port)
        assert client.send(MAIL_FROM, RCPT, DATA).code == 250
        assert first.connections == 1
    # the server went away and came back: the idle session is dead, RSET finds out
    with CaptureServer(port=port) as second:
        r = client.send(MAIL_FROM, RCPT, DATA)
        assert r.code == 250, r
        assert len(second.messages) == 1
    assert client.open_sessions == 1


def test_replies_and_errors(smtp_capture: CaptureServer, client_for):
    client = client_for(smtp_capture.port)
    smtp_capture.script(RCPT, "451 4.3.0 later")
    r = client.send(MAIL_FROM, RCPT, DATA)
    assert (r.code, r.stage, r.result_class) == (451, "rcpt", ResultClass.TRANSIENT)
    assert r.reply == "451 4.3.0 later"
    smtp_capture.script(RCPT, "550 5.1.1 unknown")
    r = client.send(MAIL_FROM, RCPT, DATA)
    assert (r.code, r.result_class) == (550, ResultClass.PERMANENT)
    smtp_capture.script(RCPT, "554 5.6.0 rejected", stage="data")
    r = client.send(MAIL_FROM, RCPT, DATA)
    assert (r.code, r.stage, r.result_class) == (554, "data", ResultClass.PERMANENT)
    r = client.send(MAIL_FROM, RCPT, DATA)  # the same session still works
    assert r.code == 250 and smtp_capture.connections == 1
    assert client.send(MAIL_FROM, "bad\r\nRCPT TO:<x@y>", DATA).result_class is (
        ResultClass.PERMANENT
    )


def test_connection_refused_is_transient(client_for):
    r = client_for(free_port()).send(MAIL_FROM, RCPT, DATA)
    assert r.code is None and r.stage == "connect"
    assert r.result_class is ResultClass.TRANSIENT
    assert "refused" in r.text


def test_message_above_the_advertised_size_is_refused_locally(smtp_capture_factory, client_for):
    server = smtp_capture_factory(data_size_limit=1000)
    r = client_for(server.port).send(MAIL_FROM, RCPT, b"x" * 2000 + b"\r\n")
    assert (r.code, r.result_class) == (552, ResultClass.PERMANENT)
    assert r.text.startswith("5.3.4")


def test_starttls_required_with_verification(
    smtp_capture_factory, client_for, tls_server_ctx, ca_file
):
    server = smtp_capture_factory(tls_context=tls_server_ctx, require_starttls=True)
    r = client_for(server.port, starttls="required", ca_file=str(ca_file)).send(
        MAIL_FROM, RCPT, DATA
    )
    assert r.code == 250, r
    assert server.messages[0].tls


def test_starttls_required_refuses_an_unverified_certificate(
    smtp_capture_factory, client_for, tls_server_ctx
):
    server = smtp_capture_factory(tls_context=tls_server_ctx)
    # no ca_file: the system store does not know the test CA
    r = client_for(server.port, starttls="required").send(MAIL_FROM, RCPT, DATA)
    assert r.code is None and r.stage == "starttls", r
    assert "certificate" in r.text
    assert r.result_class is ResultClass.TRANSIENT
    assert server.messages == []
    # tls_verify = false: encrypted without checking (an operator's explicit choice)
    r = client_for(server.port, starttls="required", tls_verify=False).send(MAIL_FROM, RCPT, DATA)
    assert r.code == 250 and server.messages[0].tls


def test_starttls_required_but_not_offered(smtp_capture: CaptureServer, client_for):
    r = client_for(smtp_capture.port, starttls="required").send(MAIL_FROM, RCPT, DATA)
    assert r.code is None and r.stage == "starttls"
    assert r.result_class is ResultClass.TRANSIENT
    assert smtp_capture.messages == []


def test_starttls_opportunistic(smtp_capture_factory, client_for, tls_server_ctx, ca_file):
    plain = smtp_capture_factory()
    assert client_for(plain.port, starttls="opportunistic").send(MAIL_FROM, RCPT, DATA).code == 250
    assert not plain.messages[0].tls
    tls = smtp_capture_factory(tls_context=tls_server_ctx)
    client = client_for(tls.port, starttls="opportunistic", ca_file=str(ca_file))
    assert client.send(MAIL_FROM, RCPT, DATA).code == 250
    assert tls.messages[0].tls


def test_auth_after_starttls(smtp_capture_factory, client_for, tls_server_ctx, ca_file, tmp_path):
    server = smtp_capture_factory(
        tls_context=tls_server_ctx, users={"journal": "s3cret"}, auth_required=True
    )
    good = tmp_path / "good"
    good.write_text("s3cret\n")
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    common = {"starttls": "required", "ca_file": str(ca_file), "username": "journal"}
    r = client_for(server.port, password_file=str(good), **common).send(MAIL_FROM, RCPT, DATA)
    assert r.code == 250, r
    assert server.messages[0].auth_user == "journal" and server.messages[0].tls
    r = client_for(server.port, password_file=str(bad), **common).send(MAIL_FROM, RCPT, DATA)
    assert (r.code, r.stage, r.result_class) == (535, "auth", ResultClass.TRANSIENT)


def test_hostile_report_survives_the_wire(smtp_capture: CaptureServer, client_for):
    config = make_config()
    copy = make_copy(
        subject="Hi\r\nBcc: evil@attacker.example\r\n\r\nSmuggled\r\n.\r\nMAIL FROM:<x@y>",
        original_sender="alice@ext.example\r\nBcc: evil@attacker.example",
        recipients=[
            {"address": "jörg@corp.example", "type": "TO", "expanded": None, "forwarded": None}
        ],
        original="Subject: Grüße\r\n\r\n.\r\n.leading dot\r\n".encode(),
    )
    data = build_report(copy, config)
    r = client_for(smtp_capture.port).send(MAIL_FROM, RCPT, data)
    assert r.code == 250
    [got] = smtp_capture.messages
    assert got.data == data
    assert got.rcpt_tos == [RCPT]  # nothing smuggled into the envelope
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert "Bcc" not in msg and not msg.defects
    assert msg["Subject"] == "Hi Bcc: evil@attacker.example Smuggled . MAIL FROM:<x@y>"


# -- AUTH only over TLS ----------------------------------------------------------------------------


class AuthWiretap(CaptureServer):
    """A capture server that counts every AUTH exchange that reached its authenticator."""

    def __init__(self, **kwargs: Any):
        self.auth_exchanges = 0
        super().__init__(**kwargs)

    def _authenticate(self, *args: Any) -> Any:
        self.auth_exchanges += 1
        return super()._authenticate(*args)


def auth_without_tls_total() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("mailjournal_delivery_smtp_auth_without_tls_total") or 0.0


@pytest.mark.parametrize("starttls", ["off", "opportunistic"])
def test_credentials_are_never_sent_without_tls(client_for, tmp_path: Path, starttls: str):
    """A smart host offering AUTH in clear (no STARTTLS): the session ends before AUTH, a
    temporary failure; the server never sees the credentials, nothing is delivered."""
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    with AuthWiretap(users={"journal": "s3cret"}) as server:
        before = auth_without_tls_total()
        client = client_for(
            server.port, starttls=starttls, username="journal", password_file=str(password)
        )
        r = client.send(MAIL_FROM, RCPT, DATA)
        assert (r.code, r.stage, r.result_class) == (None, "auth", ResultClass.TRANSIENT), r
        assert r.text.startswith("4.7.11 ") and "credentials not sent" in r.text
        # the relay's path (several recipients, original envelope) refuses the same way
        (rr,) = client.send_envelope(MAIL_FROM, [], [(RCPT, [])], DATA)
        assert (rr.stage, rr.result_class) == ("auth", ResultClass.TRANSIENT), rr
        assert auth_without_tls_total() == before + 2
        assert server.auth_exchanges == 0
        assert "AUTH" not in {verb for _, verb in server.commands}
        assert server.messages == []


def test_credentials_go_inside_starttls(client_for, tls_server_ctx, ca_file, tmp_path: Path):
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    with AuthWiretap(tls_context=tls_server_ctx, users={"journal": "s3cret"}) as server:
        before = auth_without_tls_total()
        client = client_for(
            server.port,
            starttls="opportunistic",
            ca_file=str(ca_file),
            username="journal",
            password_file=str(password),
        )
        r = client.send(MAIL_FROM, RCPT, DATA)
        assert r.code == 250, r
        (got,) = server.messages
        assert got.tls and got.auth_user == "journal"
        assert server.auth_exchanges == 1
        assert auth_without_tls_total() == before


# -- the payload written from its parts (sendmsg), the original a view of the record -------------


def consumed(copy: dict[str, Any]) -> dict[str, Any]:
    """``copy`` as delivery admits it: decoded with its original a view of the record."""
    return decode(encode(JOURNAL_COPY, copy), JOURNAL_COPY, tail_view=True)


LARGE = b"Subject: big\r\n\r\n" + b"".join(
    b"%07d " % i + b"x" * 70 + b"\r\n" + (b".dot line\r\n" if i % 997 == 0 else b"")
    for i in range(60_000)
)  # about 4.7 MB with dot lines: many partial writes to a loopback socket


@pytest.mark.parametrize("pipelining", [False, True])
@pytest.mark.parametrize("tls", [False, True])
def test_a_large_report_of_a_viewed_original_arrives_byte_for_byte(
    smtp_capture_factory, client_for, tls_server_ctx, ca_file, pipelining: bool, tls: bool
):
    config = make_config()
    plain = make_copy(original=LARGE)
    copy = consumed(plain)
    assert isinstance(copy["original"], memoryview)
    message = outgoing_message(copy, config)
    server = smtp_capture_factory(
        pipelining=pipelining, **({"tls_context": tls_server_ctx} if tls else {})
    )
    tls_cfg = {"starttls": "required", "ca_file": str(ca_file)} if tls else {}
    client = client_for(server.port, **tls_cfg)
    for _ in range(2):  # the session stays usable after a payload of many writes
        r = client.send(MAIL_FROM, RCPT, message)
        assert r.code == 250, r
    assert [m.data for m in server.messages] == [build_report(plain, config)] * 2
    assert all(m.tls == tls for m in server.messages)
    assert server.connections == 1


def test_a_server_that_stops_reading_the_payload_times_out(client_for):
    """A next hop that takes DATA and then reads nothing: the send gives up after the command
    timeout with a transient result, and the session is not reused."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        reader = conn.makefile("rb")
        conn.sendall(b"220 stall.test ESMTP\r\n")
        while True:
            line = reader.readline()
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-stall.test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                return  # and never read again
            elif line:
                conn.sendall(b"250 ok\r\n")
            else:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = SmtpClient(
        make_config(
            {
                "delivery": {
                    "smart_host": {"host": "127.0.0.1", "port": port},
                    "connect_timeout_seconds": 3,
                    "command_timeout_seconds": 1,
                }
            }
        ).delivery,
        local_hostname="deliver.test",
    )
    try:
        started = time.monotonic()
        r = client.send(
            MAIL_FROM,
            RCPT,
            outgoing_message(consumed(make_copy(original=LARGE * 4)), make_config()),
        )
        elapsed = time.monotonic() - started
        assert r.code is None and r.result_class is ResultClass.TRANSIENT, r
        assert "closed the connection" in r.reply or "timed out" in r.reply, r
        assert elapsed < 30, elapsed  # bounded by the timeout, not by the stalled peer
        assert client.open_sessions == 0
    finally:
        client.close()
        thread.join(timeout=10)
        for conn in accepted:
            conn.close()
        listener.close()
