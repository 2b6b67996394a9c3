"""Delivery's routes: each journal (or NDR) address goes to the route that matches it
(:meth:`mailjournal.config.DeliveryConfig.route_for`), else to the smart host (the default
route). Each route has its own SMTP client (its sessions, TLS and AUTH), its own concurrency and
its own bound on copies waiting for a session.

Isolation: a sending thread takes a slot of its copy's route (:class:`RouteGate`) before it
connects. At most ``concurrency`` copies of a route are in a transaction and at most
``max_waiting`` wait for one; a copy beyond that is not attempted but deferred to the first
retry tier, its attempt count unchanged (so it never expires sooner for it). The stage's thread
pool has room for every route's slots and waiters (:func:`pool_size`): a route that is down or
slow holds only its own threads, never another route's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from delivery import metrics
from mailjournal.config import DeliveryConfig, SmartHostConfig
from mailjournal.metrics import children
from mailjournal.smtp.client import SmtpClient
from mailjournal.smtp.mx import MxError, Resolver, mx_hosts
from mailjournal.smtp.outcomes import SESSION_STAGES, SmtpResult
from mailjournal.smtp.wire import Outgoing

DEFAULT_ROUTE = "default"
_ROUTE_ATTEMPTS = children(metrics.ROUTE_ATTEMPTS)
MAX_CACHED_ADDRESSES = 100_000


class RouteGate:
    """A route's slots: ``concurrency`` in a transaction, ``max_waiting`` waiting for one."""

    def __init__(self, name: str, concurrency: int, max_waiting: int):
        self.name = name
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self.active = 0
        self.waiting = 0
        self._queued = metrics.ROUTE_QUEUED.labels(name)
        self._inflight = metrics.ROUTE_INFLIGHT.labels(name)

    @contextlib.contextmanager
    def enter(self) -> Iterator[bool]:
        """True inside a slot; False (at once) when the route's slots and waiters are full."""
        with self._lock:
            admitted = self.active + self.waiting < self.concurrency + self.max_waiting
            if admitted:
                self.waiting += 1
        if not admitted:
            yield False
            return
        self._queued.inc()
        self._slots.acquire()
        with self._lock:
            self.waiting -= 1
            self.active += 1
        self._queued.dec()
        self._inflight.inc()
        try:
            yield True
        finally:
            with self._lock:
                self.active -= 1
            self._inflight.dec()
            self._slots.release()


@dataclass
class Route:
    """One route as delivery runs it."""

    name: str
    hop: SmartHostConfig
    mx: bool
    gate: RouteGate
    clients: dict[str, SmtpClient]  # "host:port" -> its client


class Routes:
    """The routes of ``cfg`` (the smart host as route ``default``), each with its clients."""

    def __init__(
        self,
        cfg: DeliveryConfig,
        *,
        smtp: SmtpClient | None = None,
        resolver: Resolver | None = None,
        dns_timeout: float = 10.0,
    ):
        self._cfg = cfg
        self._resolver = resolver
        self._dns_timeout = dns_timeout
        self._lock = threading.Lock()
        self._by_address: dict[str, Route] = {}
        default_client = smtp or SmtpClient(cfg)
        self.default = Route(
            DEFAULT_ROUTE,
            cfg.smart_host,
            False,
            RouteGate(DEFAULT_ROUTE, cfg.concurrency, cfg.concurrency),
            {default_client.address: default_client},
        )
        self.routes: dict[str, Route] = {}
        for rc in cfg.routes:
            route = Route(
                rc.name, rc, rc.mx, RouteGate(rc.name, rc.concurrency, rc.max_waiting), {}
            )
            if not rc.mx:
                route.clients[f"{rc.host}:{rc.port}"] = SmtpClient(cfg, host=_hop(rc, rc.host))
            self.routes[rc.name] = route
        for route in self.all():
            metrics.ROUTE_QUEUED.labels(route.name)
            metrics.ROUTE_INFLIGHT.labels(route.name)
            metrics.ROUTE_TLS_FAILURES.labels(route.name)
            for result in ("delivered", "transient", "permanent", "deferred"):
                metrics.ROUTE_ATTEMPTS.labels(route.name, result)

    def all(self) -> list[Route]:
        return [self.default, *self.routes.values()]

    @property
    def destination(self) -> str:
        names = ", ".join(f"{r.name} ({_where(r)})" for r in self.all())
        return f"routes {names}"

    def route_for(self, address: str) -> Route:
        route = self._by_address.get(address)
        if route is None:  # journal and NDR addresses are few: each is matched once
            rc = self._cfg.route_for(address)
            route = self.default if rc is None else self.routes[rc.name]
            with self._lock:
                if len(self._by_address) < MAX_CACHED_ADDRESSES:
                    self._by_address[address] = route
        return route

    def send(self, route: Route, mail_from: str, rcpt: str, data: bytes | Outgoing) -> SmtpResult:
        """One attempt on ``route`` (inside its gate): its server, or its MX hosts in order
        while a host cannot be reached."""
        if route.mx:
            domain = rcpt.rpartition("@")[2]
            try:
                hosts = mx_hosts(domain, self._resolver_or_default(), self._dns_timeout)
            except MxError as exc:
                code = 550 if exc.permanent else 451
                return SmtpResult(
                    code, str(exc), "local", f"mx:{domain}", permanent_local=exc.permanent
                )
        else:
            hosts = [route.hop.host]
        result = SmtpResult(None, "no host", "connect")
        for host in hosts:
            result = self._client(route, host).send(mail_from, rcpt, data)
            if result.stage == "starttls":
                metrics.ROUTE_TLS_FAILURES.labels(route.name).inc()
            # a host that cannot be reached says nothing about the message: try the next MX
            if result.code is not None and result.stage not in SESSION_STAGES:
                break
        _ROUTE_ATTEMPTS(route.name, result.result_class.value).inc()
        return result

    def _client(self, route: Route, host: str) -> SmtpClient:
        key = f"{host}:{route.hop.port}"
        with self._lock:
            client = route.clients.get(key)
            if client is None:
                client = route.clients[key] = SmtpClient(self._cfg, host=_hop(route.hop, host))
            return client

    def _resolver_or_default(self) -> Resolver:
        if self._resolver is None:
            import dns.resolver

            self._resolver = dns.resolver.Resolver()
        return self._resolver

    def close(self) -> None:
        for route in self.all():
            with self._lock:
                clients = list(route.clients.values())
            for client in clients:
                client.close()


def pool_size(cfg: DeliveryConfig) -> int:
    """Sending threads: every route's slots and waiters (the smart host's waiters as many as its
    slots), so no route can take another's threads. With the smart host alone there is no other
    route to protect: its slots are enough, and copies wait for one in the pool's queue rather
    than as threads parked on the gate (16 of them, woken for every copy, cost a quarter of
    delivery's CPU per 1 KB copy in context switches)."""
    if not cfg.routes:
        return cfg.concurrency
    return 2 * cfg.concurrency + sum(r.concurrency + r.max_waiting for r in cfg.routes)


def _hop(rc: SmartHostConfig, host: str) -> SmartHostConfig:
    """The SmartHostConfig of one server of a route (its TLS and AUTH settings)."""
    fields = set(SmartHostConfig.model_fields)
    return SmartHostConfig(**{k: getattr(rc, k) for k in fields if k != "host"}, host=host)


def _where(route: Route) -> str:
    return "MX" if route.mx else f"{route.hop.host}:{route.hop.port}"
