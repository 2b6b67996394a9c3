"""The trusted-client rule (mailjournal.trust): one answer for ingest's live session and for the
MessageReceived it recorded."""

from __future__ import annotations

import itertools

import pytest

from ingest.policy import Policy
from mailjournal.trust import client_trusted, event_client_trusted, ip_trusted
from tests.fixtures.config import make_config
from tests.fixtures.journal import make_event

NETS = ("10.0.0.0/8", "2001:db8::/32")


@pytest.mark.parametrize(
    ("ip", "trusted"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # an IPv4 client on a dual-stack socket
        ("2001:db8::25", True),
        ("192.0.2.1", False),
        ("::ffff:192.0.2.1", False),
        ("", False),
        ("unknown", False),
        ("10.1.2.3/8", False),
    ],
)
def test_ip_trusted(ip: str, trusted: bool) -> None:
    assert ip_trusted(ip, NETS) is trusted
    assert ip_trusted(ip, list(NETS)) is trusted  # any iterable of networks
    assert not ip_trusted(ip, ())


def test_client_trusted_by_network_authentication_or_relay_listener() -> None:
    def trusted(ip: str, authenticated: bool, role: str) -> bool:
        return client_trusted(ip, authenticated=authenticated, listener_role=role, networks=NETS)

    assert trusted("10.1.2.3", False, "internet")
    assert trusted("192.0.2.1", True, "internet")
    assert trusted("192.0.2.1", False, "relay")
    assert not trusted("192.0.2.1", False, "internet")
    assert not trusted("192.0.2.1", False, "submission")


def test_the_recorded_session_is_judged_as_ingest_judged_it() -> None:
    config = make_config()
    policy = Policy(config)
    networks = config.organization.trusted_networks
    for ip, auth_user, role in itertools.product(
        ["10.1.2.3", "203.0.113.5", "::ffff:10.0.0.1", "junk"],
        [None, "alice"],
        ["internet", "relay"],
    ):
        event = make_event(
            "a@ext.example",
            ["b@corp.example"],
            client_ip=ip,
            auth_user=auth_user,
            listener_role=role,
        )
        live = policy.trusted(ip, authenticated=auth_user is not None, listener_role=role)
        assert event_client_trusted(event, networks) is live, (ip, auth_user, role)
        assert config.organization.is_trusted_ip(ip) is policy.ip_trusted(ip)


def test_an_event_without_client_fields_is_untrusted() -> None:
    assert not event_client_trusted({}, NETS)
    assert not event_client_trusted({"client": None, "auth_user": "", "listener_role": None}, NETS)
