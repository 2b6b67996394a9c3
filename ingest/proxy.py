"""PROXY protocol (HAProxy, v1 text and v2 binary) for listeners behind a TCP load balancer.

The server reads the header before the banner with aiosmtpd's parser (``aiosmtpd.proxy_protocol``,
within :data:`PROXY_TIMEOUT_SECONDS`); this module
decides what it means for us: the real client address, and who proxied it. A listener with
``proxy_protocol = true`` requires the header on every connection (a connection without a valid
one is closed before the banner), and believes it only from ``proxy_protocol_peers`` (the load
balancer's networks, :class:`ProxyPeers`): a connection from any other address is closed at once,
before anything is read, so a pod or node port reached directly cannot claim a trusted client.

The encoders are the reference for tests and tools that speak to such a listener.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from aiosmtpd.proxy_protocol import AF, V2_CMD, V2_SIGNATURE, ProxyData

# how long a client may take to send its PROXY header
PROXY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ClientAddress:
    ip: str
    port: int
    proxied_by: str | None = None  # the load balancer, when the PROXY header named the client


def _ip_text(value: object) -> str:
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return str(value.ipv4_mapped)
    return str(value)


def peer_address(peer: object) -> ClientAddress:
    """From ``transport.get_extra_info('peername')``."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        if ":" in host:  # IPv6, maybe an IPv4-mapped one
            host = _ip_text(ipaddress.ip_address(host.partition("%")[0]))
        return ClientAddress(host, int(peer[1]))
    return ClientAddress(str(peer or "unknown"), 0)


class ProxyPeers:
    """The networks allowed to send a PROXY header to one listener."""

    def __init__(self, networks: Iterable[str]):
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def allows(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def client_from_proxy(data: ProxyData | None, peer: ClientAddress) -> ClientAddress:
    """The client a valid PROXY header speaks for; the direct peer for v2 LOCAL (the balancer's
    own health checks) and for UNKNOWN/UNSPEC families."""
    if data is None or not data.valid:
        return peer
    if data.version == 2 and data.command == V2_CMD.LOCAL:
        return peer
    if data.family not in (AF.INET, AF.INET6) or data.src_addr is None:
        return peer
    return ClientAddress(_ip_text(data.src_addr), int(data.src_port or 0), proxied_by=peer.ip)


def encode_v1(src: str, src_port: int, dst: str, dst_port: int) -> bytes:
    family = "TCP6" if ipaddress.ip_address(src).version == 6 else "TCP4"
    return f"PROXY {family} {src} {dst} {src_port} {dst_port}\r\n".encode("ascii")


def encode_v2(src: str, src_port: int, dst: str, dst_port: int, *, local: bool = False) -> bytes:
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        fam_proto, body = 0x11, struct.pack("!4s4sHH", s.packed, d.packed, src_port, dst_port)
    else:
        fam_proto, body = 0x21, struct.pack("!16s16sHH", s.packed, d.packed, src_port, dst_port)
    return V2_SIGNATURE + bytes([0x21, fam_proto]) + struct.pack("!H", len(body)) + body
