"""Who is a trusted client: the rule ingest (relay permission, protected addresses) and the
journal worker (directions) apply, written once.

A client is *trusted* when it is on a trusted network (``organization.trusted_networks``),
authenticated, or connected to a ``relay`` listener. Ingest decides it for a live session;
:func:`event_client_trusted` decides it again, later, from what the ``MessageReceived`` recorded
about that session, and the two must agree. (The audit's independent check re-derives the rule
on purpose, see :mod:`audit.reconcile`; it shares only :func:`ip_trusted`.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from typing import Any

IPNetwork = IPv4Network | IPv6Network

# ``ListenerConfig.role`` / ``schemas.events.ListenerRole.RELAY``, spelt out: importing schemas
# would load the Avro codec into everything that reads the configuration
RELAY_ROLE = "relay"


@lru_cache(maxsize=64)
def _networks(nets: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n) for n in nets)


@lru_cache(maxsize=65536)
def _ip_in(nets: tuple[str, ...], ip: str) -> bool:
    # cached: the journal worker asks for the same few relay addresses millions of times, and
    # ingest once per connection
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # an IPv4 client on a dual-stack socket
    return any(addr in net for net in _networks(nets))


def ip_trusted(ip: str, networks: Iterable[str]) -> bool:
    """Is ``ip`` (IPv4-mapped IPv6 taken as IPv4) in one of ``networks``? Not an address: no."""
    return _ip_in(tuple(networks), ip)


def client_trusted(
    ip: str, *, authenticated: bool, listener_role: str, networks: Iterable[str]
) -> bool:
    """Trusted network, authenticated, or received on a relay listener."""
    return listener_role == RELAY_ROLE or authenticated or ip_trusted(ip, networks)


def event_client_trusted(event: Mapping[str, Any], networks: Iterable[str]) -> bool:
    """:func:`client_trusted` for the session a ``MessageReceived`` recorded."""
    client = event.get("client") or {}
    return client_trusted(
        str(client.get("ip") or ""),
        authenticated=bool(event.get("auth_user")),
        listener_role=str(event.get("listener_role") or ""),
        networks=networks,
    )
