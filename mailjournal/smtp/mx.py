"""MX lookup of a domain (RFC 5321 section 5.1), for the relay's next hops and delivery's routes
with ``mx = true``."""

from __future__ import annotations

from typing import Any, Protocol


class Resolver(Protocol):
    """What an MX lookup needs of a DNS resolver (``dns.resolver.Resolver`` has it; tests inject a
    stub)."""

    def resolve(self, qname: str, rdtype: str, *, lifetime: float | None = None) -> Any: ...


class MxError(Exception):
    def __init__(self, text: str, permanent: bool):
        super().__init__(text)
        self.permanent = permanent


def mx_hosts(domain: str, resolver: Resolver, timeout: float) -> list[str]:
    """Mail exchangers of ``domain`` by preference (RFC 5321 section 5.1); the domain itself when
    it has no MX record; :class:`MxError` for a null MX (RFC 7505), a non-existent domain
    (permanent) or a DNS failure (temporary)."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(domain, "MX", lifetime=timeout)
    except dns.resolver.NXDOMAIN:
        raise MxError(f"5.1.2 domain {domain} does not exist", permanent=True) from None
    except dns.resolver.NoAnswer:
        return [domain]
    except (dns.exception.DNSException, OSError) as exc:
        raise MxError(f"4.4.3 DNS lookup of {domain} failed: {exc}", permanent=False) from None
    records = sorted((int(r.preference), str(r.exchange).rstrip(".")) for r in answer)
    if len(records) == 1 and records[0][1] in ("", "."):
        raise MxError(f"5.1.10 domain {domain} accepts no mail (null MX)", permanent=True)
    return [host for _, host in records if host not in ("", ".")]
