"""Sending a RELAY copy to its next hop: the route's hosts (its server, or the recipient
domain's MX hosts in order), one reused-session SMTP client per host, the original envelope."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from mailjournal.config import Config, DeliveryConfig, NextHopConfig, SmartHostConfig
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.outcomes import SmtpResult
from mailjournal.smtp.wire import BodyFacts, Outgoing
from relay.mx import MxError, Resolver, mx_hosts
from relay.routing import hop_for_key, mail_args, rcpt_args

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
                Outgoing.of(copy["original"], BodyFacts.from_record(copy.get("body_facts"))),
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
