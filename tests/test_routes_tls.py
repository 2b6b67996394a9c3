"""A route's TLS and AUTH against real capture servers with certificates from test CAs
(trustme): CA pinning, certificate fingerprint pinning, a client certificate the server
requires, AUTH from a credentials file, STARTTLS required of a server that does not offer it.
Each failure is a temporary session failure counted as a TLS failure of the route."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import REGISTRY

from delivery.routes import Routes
from mailjournal.config import load_config_dict
from mailjournal.smtp.outcomes import ResultClass
from tests.fixtures.smtp import CaptureServer

ADDRESS = "journal@tenant.archive.example"
MESSAGE = b"From: a@corp.example\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("route-pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("mailjournal.corp.example")
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    der = ssl.PEM_cert_to_DER_cert(server.cert_chain_pems[0].bytes().decode())
    return {"dir": d, "ca": ca, "fingerprint": hashlib.sha256(der).hexdigest()}


def server_context(pki: dict[str, Any], *, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["dir"] / "server.pem"))
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki["dir"] / "ca.pem"))
    return ctx


@pytest.fixture
def routes_for() -> Iterator[Callable[..., Routes]]:
    made: list[Routes] = []

    def make(server: CaptureServer, **route: Any) -> Routes:
        cfg = load_config_dict(
            {
                "organization": {"accepted_domains": ["corp.example"]},
                "delivery": {
                    "connect_timeout_seconds": 5,
                    "command_timeout_seconds": 5,
                    "routes": [
                        {
                            "name": "cloud",
                            "match": ["*.archive.example"],
                            "host": "127.0.0.1",
                            "port": server.port,
                            **route,
                        }
                    ],
                },
            }
        )
        routes = Routes(cfg.delivery)
        made.append(routes)
        return routes

    yield make
    for r in made:
        r.close()


def tls_failures() -> float:
    value = REGISTRY.get_sample_value(
        "mailjournal_delivery_route_tls_failures_total", {"route": "cloud"}
    )
    return value or 0.0


def send(routes: Routes) -> Any:
    route = routes.route_for(ADDRESS)
    assert route.name == "cloud"
    return routes.send(route, "journal-ndr@corp.example", ADDRESS, MESSAGE)


def test_pinned_ca_verifies_and_another_ca_fails(
    pki: dict[str, Any],
    smtp_capture_factory: Callable[..., CaptureServer],
    routes_for: Callable[..., Routes],
) -> None:
    server = smtp_capture_factory(tls_context=server_context(pki), require_starttls=True)
    ok = send(routes_for(server, ca_file=str(pki["dir"] / "ca.pem")))
    assert ok.result_class is ResultClass.DELIVERED, ok
    assert server.messages[0].tls
    before = tls_failures()
    bad = send(routes_for(server, ca_file=str(pki["dir"] / "other-ca.pem")))
    assert bad.result_class is ResultClass.TRANSIENT and bad.stage == "starttls", bad
    assert "certificate verification failed" in bad.text
    assert tls_failures() == before + 1
    assert len(server.messages) == 1


def test_fingerprint_pinning(
    pki: dict[str, Any],
    smtp_capture_factory: Callable[..., CaptureServer],
    routes_for: Callable[..., Routes],
) -> None:
    server = smtp_capture_factory(tls_context=server_context(pki), require_starttls=True)
    common = {"ca_file": str(pki["dir"] / "ca.pem")}
    ok = send(routes_for(server, tls_fingerprints=[pki["fingerprint"]], **common))
    assert ok.result_class is ResultClass.DELIVERED, ok
    wrong = "00" * 32
    before = tls_failures()
    bad = send(routes_for(server, tls_fingerprints=[wrong], **common))
    assert bad.result_class is ResultClass.TRANSIENT and bad.stage == "starttls", bad
    assert f"sha256 {pki['fingerprint']}" in bad.text and "not one of the pinned" in bad.text
    assert tls_failures() == before + 1
    assert len(server.messages) == 1


def test_client_certificate_the_server_requires(
    pki: dict[str, Any],
    smtp_capture_factory: Callable[..., CaptureServer],
    routes_for: Callable[..., Routes],
) -> None:
    server = smtp_capture_factory(
        tls_context=server_context(pki, client_cert=True), require_starttls=True
    )
    common = {"ca_file": str(pki["dir"] / "ca.pem")}
    without = send(routes_for(server, **common))
    assert without.result_class is ResultClass.TRANSIENT, without
    assert server.messages == []
    ok = send(routes_for(server, client_cert_file=str(pki["dir"] / "client.pem"), **common))
    assert ok.result_class is ResultClass.DELIVERED, ok
    assert len(server.messages) == 1 and server.messages[0].tls


def test_auth_from_a_credentials_file(
    pki: dict[str, Any],
    tmp_path: Path,
    smtp_capture_factory: Callable[..., CaptureServer],
    routes_for: Callable[..., Routes],
) -> None:
    server = smtp_capture_factory(
        tls_context=server_context(pki),
        require_starttls=True,
        users={"archiver": "s3cret:with-colon"},
        auth_required=True,
    )
    creds = tmp_path / "credentials"
    creds.write_text("archiver:s3cret:with-colon\n")
    ok = send(routes_for(server, ca_file=str(pki["dir"] / "ca.pem"), credentials_file=str(creds)))
    assert ok.result_class is ResultClass.DELIVERED, ok
    assert server.messages[0].auth_user == "archiver"
    creds.write_text("archiver:wrong\n")
    bad = send(routes_for(server, ca_file=str(pki["dir"] / "ca.pem"), credentials_file=str(creds)))
    assert bad.result_class is ResultClass.TRANSIENT and bad.stage == "auth", bad
    assert len(server.messages) == 1


def test_required_starttls_not_offered_fails_and_counts(
    smtp_capture_factory: Callable[..., CaptureServer],
    routes_for: Callable[..., Routes],
) -> None:
    plain = smtp_capture_factory()
    before = tls_failures()
    result = send(routes_for(plain))  # leaves the organisation: starttls required by default
    assert result.result_class is ResultClass.TRANSIENT and result.stage == "starttls", result
    assert "does not offer STARTTLS" in result.text
    assert tls_failures() == before + 1
    assert plain.messages == []
