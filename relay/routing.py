"""The relay of originals in inline mode: routing (pure) and sending to next hops.

A message accepted on a listener with ``relay = true`` is owed to its recipients, not only to the
journal. The relay worker (:class:`delivery.worker.DeliveryWorker` in ``relay`` mode, its own
consumer group on the messages topic) turns each such ``MessageReceived`` into one
``JournalCopy`` of kind ``RELAY`` per destination -- the recipients of one next hop travel in one
transaction -- and sends it with the original envelope: MAIL FROM with BODY/SMTPUTF8/RET/ENVID,
each RCPT with NOTIFY/ORCPT. Retry tiers, expiry and outcomes are delivery's; failures go back to
the original sender as RFC 3464 DSNs (:mod:`relay.sender_dsn`), never to the journal NDR
addresses.

Routing, per recipient: ``relay.domains`` (exact domain) first, then ``relay.inbound`` for
internal recipients and ``relay.outbound`` for external ones. A next hop with ``mx = true`` is
looked up in DNS per recipient domain (RFC 5321 section 5.1: MX by preference, the domain's own
address when it has no MX, a null MX refuses mail).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ingest.trace import received_field
from mailjournal.addresses import domain_of
from mailjournal.config import Config, DeliveryConfig, NextHopConfig, SmartHostConfig
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.outcomes import SmtpResult
from schemas.events import JournalCopyKind, ReportFormat, make_copy_id
from schemas.records import (
    covered_recipient,
    journal_copy,
    mail_params,
    recipient,
    relay_envelope,
)

log = logging.getLogger(__name__)

# -- routing (pure) ---------------------------------------------------------------------------


def route_key(address: str, config: Config) -> str:
    """The destination of one recipient: ``domain:<d>``, ``inbound`` or ``outbound``, followed
    by ``|mx:<domain>`` when that next hop is an MX lookup."""
    domain = domain_of(address).lower().rstrip(".")
    relay = config.relay
    hop: NextHopConfig | None
    if domain in relay.domains:
        rule, hop = f"domain:{domain}", relay.domains[domain]
    elif config.organization.is_internal_domain(domain):
        rule, hop = "inbound", relay.inbound
    else:
        rule, hop = "outbound", relay.outbound
    if hop is None:
        raise ValueError(f"relay: no next hop for {rule}")
    return f"{rule}|mx:{domain}" if hop.mx else rule


def hop_for_key(key: str, config: Config) -> tuple[NextHopConfig, str | None]:
    """The next hop's settings and, for an MX route, the domain to look up."""
    rule, _, mx = key.partition("|mx:")
    relay = config.relay
    if rule.startswith("domain:"):
        hop = relay.domains.get(rule.removeprefix("domain:"))
    else:
        hop = relay.inbound if rule == "inbound" else relay.outbound
    if hop is None:
        raise ValueError(f"relay: next hop {key!r} is no longer configured")
    return hop, (mx or None)


def group_recipients(
    recipients: Sequence[Mapping[str, Any]], config: Config
) -> dict[str, list[dict[str, Any]]]:
    """Recipients by destination, in RCPT order: one transaction per destination."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in recipients:
        groups.setdefault(route_key(str(r["address"]), config), []).append(dict(r))
    return groups


def relay_copy_id(event_id: str, key: str) -> str:
    return make_copy_id(event_id, f"relay:{key}")


def mail_args(params: Mapping[str, Any]) -> list[str]:
    """The original MAIL FROM parameters as sent on (SIZE is recomputed by the client)."""
    out = []
    if params.get("body"):
        out.append(f"BODY={params['body']}")
    if params.get("smtputf8"):
        out.append("SMTPUTF8")
    if params.get("ret"):
        out.append(f"RET={params['ret']}")
    if params.get("envid"):
        out.append(f"ENVID={params['envid']}")
    return out


def rcpt_args(recipient: Mapping[str, Any]) -> list[str]:
    out = []
    if recipient.get("notify"):
        out.append("NOTIFY=" + ",".join(recipient["notify"]))
    if recipient.get("orcpt"):
        out.append(f"ORCPT={recipient['orcpt']}")
    return out


def received_header(event: Mapping[str, Any], config: Config) -> bytes:
    """Our trace field (RFC 5321 section 4.4): it makes every pass through the relay a hop that
    the loop check of ingest counts (the one ingest prepends, see :mod:`ingest.trace`)."""
    return received_field(event, config.ingest.hostname)


def relay_copies(event: Mapping[str, Any], config: Config) -> list[dict[str, Any]]:
    """One RELAY copy per destination of a ``MessageReceived`` from a relay listener."""
    raw: bytes = event["raw"]
    # ingest prepends the same field to events since MessageReceived v2: one of ours per hop
    if config.relay.add_received and not event.get("prepended_length"):
        raw = received_header(event, config) + raw
    headers = event.get("headers") or {}
    sender = event.get("mail_from") or ""
    return [
        dict(
            journal_copy(
                copy_id=relay_copy_id(str(event["event_id"]), key),
                event_id=event["event_id"],
                kind=JournalCopyKind.RELAY,
                received_at=event["received_at"],
                journal_address=rcpts[0]["address"],
                ndr_address=sender,
                format=ReportFormat.COPY,
                original_sender=sender,
                recipients=[covered_recipient(r["address"]) for r in rcpts],
                message_id=headers.get("message_id"),
                subject=headers.get("subject"),
                relay=relay_envelope(
                    mail_params(**(event.get("mail_params") or {})),
                    [recipient(**r) for r in rcpts],
                    key,
                ),
                original=raw,
            )
        )
        for key, rcpts in group_recipients(event.get("recipients") or [], config).items()
    ]


def with_recipients(copy: Mapping[str, Any], rcpts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``copy`` narrowed to ``rcpts`` (those still owed after a partial attempt)."""
    out = dict(copy)
    keep = {str(r["address"]) for r in rcpts}
    out["relay"] = {**copy["relay"], "recipients": [dict(r) for r in rcpts]}
    out["recipients"] = [r for r in copy.get("recipients") or [] if r["address"] in keep]
    out["journal_address"] = str(rcpts[0]["address"]) if rcpts else copy["journal_address"]
    return out


# -- MX lookup --------------------------------------------------------------------------------


class Resolver(Protocol):
    """What the relay needs of a DNS resolver (``dns.resolver.Resolver`` has it; tests inject a
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


# -- sending ----------------------------------------------------------------------------------

SESSION_FAILURE_STAGES = frozenset({"connect", "greeting", "ehlo", "starttls", "auth"})


class RelaySender:
    """Sends a RELAY copy to its next hop: one :class:`SmtpClient` (with its reused sessions)
    per next-hop host, several MX hosts tried in order when one cannot be reached."""

    def __init__(
        self,
        config: Config,
        cfg: DeliveryConfig,
        *,
        resolver: Resolver | None = None,
        client_factory: Callable[[DeliveryConfig, SmartHostConfig], SmtpClient] | None = None,
    ):
        self.config = config
        self._cfg = cfg
        self._resolver = resolver
        self._factory = client_factory or (lambda c, h: SmtpClient(c, host=h))
        self._clients: dict[tuple[str, str, int], SmtpClient] = {}
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return "relay next hops"

    def _client(self, key: str, hop: NextHopConfig, host: str) -> SmtpClient:
        k = (key.partition("|")[0], host, hop.port)
        with self._lock:
            client = self._clients.get(k)
            if client is None:
                smart = SmartHostConfig(**hop.model_dump(exclude={"mx", "host"}), host=host)
                client = self._clients[k] = self._factory(self._cfg, smart)
            return client

    def _resolver_or_default(self) -> Resolver:
        if self._resolver is None:
            import dns.resolver

            self._resolver = dns.resolver.Resolver()
        return self._resolver

    def send(self, copy: Mapping[str, Any]) -> list[SmtpResult]:
        env = copy["relay"]
        key = str(env["next_hop"])
        rcpts = env["recipients"]
        hop, mx_domain = hop_for_key(key, self.config)
        if mx_domain is not None:
            try:
                hosts = mx_hosts(
                    mx_domain, self._resolver_or_default(), self.config.relay.dns_timeout_seconds
                )
            except MxError as exc:
                code = 550 if exc.permanent else 451
                r = SmtpResult(
                    code, str(exc), "local", f"mx:{mx_domain}", permanent_local=exc.permanent
                )
                return [r] * len(rcpts)
        else:
            hosts = [hop.host]
        args = [(str(r["address"]), rcpt_args(r)) for r in rcpts]
        results: list[SmtpResult] = []
        for host in hosts:
            client = self._client(key, hop, host)
            results = client.send_envelope(
                str(copy.get("original_sender") or ""),
                mail_args(env.get("mail_params") or {}),
                args,
                bytes(copy["original"]),
            )
            # a host that cannot be reached says nothing about the message: try the next MX
            if not all(r.code is None or r.stage in SESSION_FAILURE_STAGES for r in results):
                break
        return results

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
        for c in clients:
            c.close()


def relay_delivery_config(config: Config) -> DeliveryConfig:
    """Delivery's settings with the relay's own concurrency, retry tiers and expiry: the one
    worker class runs both uses."""
    r = config.relay
    return config.delivery.model_copy(
        update={
            "concurrency": r.concurrency,
            "max_inflight": r.max_inflight,
            "retry_delays_seconds": list(r.retry_delays_seconds),
            "expiry_seconds": r.expiry_seconds,
        }
    )


def relay_tier_topics(config: Config) -> list[str]:
    from mailjournal.topics import relay_retry_topic_name

    return [
        relay_retry_topic_name(config, i) for i in range(len(config.relay.retry_delays_seconds))
    ]
