"""The SMTP server of ingest: aiosmtpd's protocol handling, our DATA path, policy and Kafka.

One :class:`IngestSMTP` per connection (aiosmtpd's ``SMTP`` subclassed). What we replace:

- ``EHLO``: advertises PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, DSN, STARTTLS
  (before TLS) and AUTH PLAIN LOGIN (after TLS, on listeners with ``auth``);
- ``MAIL``/``RCPT``: our parser records every DSN/SIZE/BODY/SMTPUTF8 parameter and applies
  :class:`ingest.policy.Policy` (relay control, protected addresses, limits);
- ``DATA``: :mod:`ingest.datapath` reads in bulk; the event is published and ``250`` is sent
  only after Kafka's delivery report;
- every reply without an enhanced status code gets the default one for its code;
- connection limits (global before anything, per client after the PROXY header), PROXY headers
  only from ``proxy_protocol_peers``, the session limits of :mod:`ingest.limits` (junk commands,
  error limits and delays, session lifetime, minimum DATA rate, connection rate and AUTH failures
  per client), AUTH checked on its own threads, graceful shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import logging
import os
import re
import socket
import ssl
import time
from binascii import Error as B64Error
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosmtpd
from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, _AuthMechAttr, login_always_fail

import schemas
from ingest import limits
from ingest import metrics as m
from ingest.auth import Credentials, PasswordChecker
from ingest.datapath import DataParser, DataStatus, read_data
from ingest.directory import IngestDirectory
from ingest.headers import received_count, selected_headers
from ingest.policy import (
    BARE_NEWLINE,
    BUSY_BYTES,
    KAFKA_ERROR,
    KAFKA_TIMEOUT,
    NEED_MAIL,
    NESTED_MAIL,
    OK_RECIPIENT,
    OK_SENDER,
    QUEUE_FULL,
    SENDER_LOOKUP_FAILED,
    SHUTTING_DOWN,
    ConnectionLimiter,
    InflightBudget,
    Policy,
    Reply,
    SyntaxRefusal,
    line_too_long,
    queued,
    size_exceeded,
)
from ingest.proxy import (
    PROXY_TIMEOUT_SECONDS,
    ClientAddress,
    ProxyPeers,
    client_from_proxy,
    peer_address,
)
from ingest.publisher import Publisher, PublishError
from mailjournal.config import Config, ListenerConfig
from mailjournal.faults import fault_point
from mailjournal.trace import traced
from schemas.events import Recipient, TlsInfo
from schemas.records import client_info, message_received, recipient

log = logging.getLogger(__name__)

IDENT = "ESMTP mailjournal"
# hashing a big message in a worker thread (hashlib drops the GIL) keeps the loop serving others
THREAD_HASH_BYTES = 1024 * 1024
MAX_AUTH_FAILURES = 3
NO_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients", "sequence")
INTERNAL_ERROR = Reply(421, "4.3.0", "Local error in processing, closing", "internal_error")
TOO_MANY_AUTH_FAILURES = Reply(421, "4.7.0", "Too many authentication failures", "auth_failures")
AUTH_NOT_AVAILABLE = Reply(503, "5.5.1", "AUTH not available", "auth_unavailable")
TIMED_OUT = Reply(421, "4.4.2", "Timeout, closing connection", "timeout")

# default enhanced status code per reply code, for aiosmtpd's own replies (RFC 2034, RFC 3463)
DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")

_DATA_REFUSALS: dict[DataStatus, Callable[[Config], Reply]] = {
    DataStatus.TOO_BIG: lambda c: size_exceeded(c.ingest.max_message_size),
    DataStatus.LINE_TOO_LONG: lambda c: line_too_long(c.ingest.max_line_length),
    DataStatus.BARE_NEWLINE: lambda c: BARE_NEWLINE,
    DataStatus.NO_MEMORY: lambda c: BUSY_BYTES,
}


def _utf8(text: str) -> str:
    """Command arguments are decoded with surrogateescape; events need valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _QuietSession(Session):
    """aiosmtpd's Session logs a deprecation warning whenever AUTH sets ``login_data``."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


@dataclass(slots=True)
class Transaction:
    sender: str
    params: Any  # policy.MailParams
    recipients: list[Recipient] = field(default_factory=list)


class ListenerRuntime:
    """One configured listener: its TLS context, credentials and metric children."""

    def __init__(self, cfg: ListenerConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.role = cfg.role
        self.tls_context: ssl.SSLContext | None = None
        if cfg.tls_cert_file is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
            self.tls_context = ctx
        self.credentials = (
            Credentials(cfg.credentials_file)
            if cfg.auth and cfg.credentials_file is not None
            else None
        )
        self.m_connections = m.CONNECTIONS.labels(cfg.name)
        self.m_connections_total = m.CONNECTIONS_TOTAL.labels(cfg.name)
        self.m_accepted = m.MESSAGES_ACCEPTED.labels(cfg.name)
        # series at 0 from the start, so rate()/increase() see the first Kafka refusal
        for reason in ("kafka_error", "kafka_timeout", "queue_full"):
            m.MESSAGES_REFUSED.labels(cfg.name, reason, "4xx")
        self.m_bytes = m.RECEIVED_BYTES.labels(cfg.name)
        self.proxy_peers = ProxyPeers(cfg.proxy_protocol_peers) if cfg.proxy_protocol else None
        self.m_proxy_refused = m.PROXY_PEER_REFUSED.labels(cfg.name)
        self.m_error_delays = m.ERROR_DELAYS.labels(cfg.name)


class IngestContext:
    """State shared by the connections of one process."""

    def __init__(self, config: Config, publisher: Publisher | None):
        self.config = config
        self.ingest = config.ingest
        self.policy = Policy(config)
        self.directory = IngestDirectory.from_config(config)  # recipients, sender logins
        self.limiter = ConnectionLimiter(
            config.ingest.max_connections, config.ingest.max_connections_per_client
        )
        self.budget = InflightBudget(
            config.ingest.max_inflight_messages, config.ingest.max_inflight_bytes
        )
        self.client_rate = limits.ClientRate(config.ingest.client_connection_rate_limit)
        self.auth_failures = limits.AuthFailures(
            config.ingest.auth_failure_limit, config.ingest.auth_failure_window_seconds
        )
        self.password_checker = PasswordChecker(config.ingest.auth_threads)
        self.publisher = publisher
        self.topic = config.kafka.topics.messages.name
        self.ingest_host = socket.gethostname()
        self.loop = asyncio.get_running_loop()
        self.connections: set[IngestSMTP] = set()
        self.shutting_down = False
        self.idle = asyncio.Event()  # set when no connection is busy with a message
        self.idle.set()
        self.busy = 0

    def busy_inc(self) -> None:
        self.busy += 1
        self.idle.clear()

    def busy_dec(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self.idle.set()


class _Handler:
    """aiosmtpd calls hooks on a handler object; ours only answers the PROXY hook."""

    def __dir__(self) -> list[str]:  # see IngestSMTP.__dir__
        return ["handle_PROXY"]

    async def handle_PROXY(
        self, server: IngestSMTP, session: Session, envelope: Any, proxy_data: ProxyData
    ) -> bool:
        return await server.on_proxy(proxy_data)


_HANDLER = _Handler()


class IngestSMTP(SMTP):
    # aiosmtpd sizes its StreamReader by this; DSN and AUTH parameters make command lines longer
    # than RFC 5321's 512 (the DATA path has its own line limit)
    line_length_limit = 16 * 1024

    # aiosmtpd's __init__ looks its command, AUTH and hook methods up by introspection on every
    # connection (a quarter of the CPU of a 1 KB message); for the version we know we set the
    # same state directly (tests/test_ingest_policy.py compares the two)
    fast_init = aiosmtpd.__version__ == "1.4.6"

    def __init__(self, ctx: IngestContext, listener: ListenerRuntime):
        cfg = ctx.ingest
        kwargs: dict[str, Any] = {
            "hostname": cfg.hostname,
            "ident": IDENT,
            "tls_context": listener.tls_context,
            "require_starttls": listener.cfg.require_starttls,
            "timeout": cfg.command_timeout_seconds,
            "proxy_protocol_timeout": (
                PROXY_TIMEOUT_SECONDS if listener.cfg.proxy_protocol else None
            ),
            "loop": ctx.loop,
        }
        if self.fast_init:
            self._init_like_aiosmtpd(**kwargs)
        else:
            super().__init__(
                _HANDLER,
                data_size_limit=None,
                enable_SMTPUTF8=True,
                auth_require_tls=True,
                **kwargs,
            )
        # per instance: aiosmtpd keeps this dict on the class and grows it on every EHLO
        self.command_size_limits = collections.defaultdict(
            lambda: 512, {"MAIL": 2048, "RCPT": 2048, "AUTH": 12288}
        )
        self.ctx = ctx
        self.listener = listener
        self.client = ClientAddress("unknown", 0)
        self.tx: Transaction | None = None
        self.busy = False
        self.auth_user: str | None = None
        self._refused = False
        self._released = True
        self._bound_ip: str | None = None
        self._auth_failures = 0
        self.counters = limits.SessionCounters(
            cfg.junk_command_limit,
            cfg.soft_error_limit,
            cfg.hard_error_limit,
            cfg.error_sleep_seconds,
        )
        self._lifetime_handle: asyncio.TimerHandle | None = None
        self._expire_after_message = False
        self._closing = False  # a final 421 was sent: no more error counting
        self._data_rate: limits.DataRate | None = None
        self._data_parser: DataParser | None = None

    def _init_like_aiosmtpd(
        self,
        *,
        hostname: str,
        ident: str,
        tls_context: ssl.SSLContext | None,
        require_starttls: bool,
        timeout: float,
        proxy_protocol_timeout: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """aiosmtpd 1.4.6's ``SMTP.__init__`` for our arguments (no data size limit, SMTPUTF8,
        bytes content, AUTH PLAIN/LOGIN only over TLS, no call limits), without introspection."""
        self.__ident__ = ident
        self.loop = loop
        reader = asyncio.StreamReader(loop=loop, limit=self.line_length_limit)
        asyncio.StreamReaderProtocol.__init__(
            self, reader, client_connected_cb=self._cb_client_connected, loop=loop
        )
        self.event_handler = _HANDLER
        self.data_size_limit = None
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = proxy_protocol_timeout
        self._auth_callback = login_always_fail
        self._authenticator = None
        self._auth_required = False
        self._auth_methods = {
            "LOGIN": _AuthMechAttr(self.auth_LOGIN, True),
            "PLAIN": _AuthMechAttr(self.auth_PLAIN, True),
        }
        self._handle_hooks = {"PROXY": _HANDLER.handle_PROXY}
        self._ehlo_hook_ver = None
        self._smtp_methods = {name[5:]: getattr(self, name) for name in self._SMTP_METHODS}
        self._enforce_call_limit = False

    # for the generic path: aiosmtpd's __init__ calls dir() and inspect.getmembers(), which
    # evaluate every attribute; listing only the methods it looks for keeps that cheap
    _DIR: list[str] = []
    _SMTP_METHODS: list[str] = []

    def __dir__(self) -> list[str]:
        return self._DIR

    # -- idle/command/data timeouts --------------------------------------------------------------
    # aiosmtpd re-arms a timer for every command; we move a deadline and keep one timer, which
    # re-arms itself only when it fires early

    _deadline = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        self._arm(self._deadline)

    def _arm(self, when: float) -> None:
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or when < handle.when():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(when, self._timeout_cb)

    def _rate_deadline(self) -> float | None:
        """In DATA: when the phase falls below ``min_data_rate`` unless more bytes arrive."""
        if self._data_rate is None or self._data_parser is None:
            return None
        return self._data_rate.deadline(self._data_parser.wire_bytes)

    def _timeout_cb(self) -> None:
        now = self.loop.time()
        rate_due = self._rate_deadline()
        if rate_due is not None and now >= rate_due:
            self._end_session("DATA", limits.DATA_TOO_SLOW)
            return
        due = self._deadline if rate_due is None else min(self._deadline, rate_due)
        if now < due:
            self._timeout_handle = self.loop.call_at(due, self._timeout_cb)
            return
        if self.transport is not None and not self.transport.is_closing():
            self._count_refusal("TIMEOUT", TIMED_OUT)
            with contextlib.suppress(Exception):
                self._writer.write(f"{TIMED_OUT}\r\n".encode())
        super()._timeout_cb()

    def _end_session(self, command: str, reply: Reply) -> None:
        """Answer a final ``421`` and close (a limit ended the session)."""
        self._closing = True
        if self.transport is None or self.transport.is_closing():
            return
        self._count_refusal(command, reply)
        log.info("%s: %s: %s", self.listener.name, self.client.ip, reply)
        with contextlib.suppress(Exception):
            self._writer.write(f"{reply}\r\n".encode())
        self.transport.close()

    def _lifetime_cb(self) -> None:
        if self.busy:  # a message in DATA gets its reply first
            self._expire_after_message = True
        else:
            self._end_session("SESSION", limits.SESSION_TOO_LONG)

    # -- connection lifecycle ------------------------------------------------------------------

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def _refuse_connection(self, transport: asyncio.BaseTransport, reply: Reply) -> None:
        self._refused = True
        m.REFUSALS.labels(self.listener.name, "CONNECT", reply.reason, reply.reply_class).inc()
        with contextlib.suppress(Exception):
            transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
        transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and self._original_transport is None:  # not STARTTLS
            ctx = self.ctx
            peers = self.listener.proxy_peers
            if peers is not None:
                peer = peer_address(transport.get_extra_info("peername"))
                if not peers.allows(peer.ip):
                    self._refuse_proxy_peer(transport, peer)
                    return
            if ctx.shutting_down:
                self._refuse_connection(transport, SHUTTING_DOWN)
                return
            refusal = ctx.limiter.open()
            if refusal is not None:
                self._refuse_connection(transport, refusal)
                return
            self._released = False
            self.client = peer_address(transport.get_extra_info("peername"))
            if not self.listener.cfg.proxy_protocol:
                refusal = self._rate_refusal() or ctx.limiter.bind(self.client.ip)
                if refusal is not None:
                    self._release()
                    self._refuse_connection(transport, refusal)
                    return
                self._bound_ip = self.client.ip
            ctx.connections.add(self)
            self.listener.m_connections.inc()
            self.listener.m_connections_total.inc()
            self._lifetime_handle = self.loop.call_later(
                ctx.ingest.session_lifetime_seconds, self._lifetime_cb
            )
        super().connection_made(transport)

    def _refuse_proxy_peer(self, transport: asyncio.BaseTransport, peer: ClientAddress) -> None:
        """A PROXY listener reached by someone other than the balancer: closed without reading
        its header or sending a banner (as postscreen drops a client), so it cannot claim a
        trusted address and learns nothing about the server."""
        self._refused = True
        self.listener.m_proxy_refused.inc()
        log.warning(
            "%s: connection from %s refused: not in proxy_protocol_peers",
            self.listener.name,
            peer.ip,
        )
        transport.close()

    def _rate_refusal(self) -> Reply | None:
        """Anvil's connection rate per client address; trusted networks are exempt (Postfix:
        smtpd_client_event_limit_exceptions = $mynetworks)."""
        ctx = self.ctx
        if ctx.client_rate.limit <= 0 or ctx.policy.ip_trusted(self.client.ip):
            return None
        if ctx.client_rate.connect(self.client.ip, self.loop.time()):
            return None
        return limits.CONNECTION_RATE

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self.ctx.limiter.close()
        if self._bound_ip is not None:
            self.ctx.limiter.unbind(self._bound_ip)
            self._bound_ip = None

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._lifetime_handle is not None:
            self._lifetime_handle.cancel()
            self._lifetime_handle = None
        if not self._released:
            self._release()
            self.ctx.connections.discard(self)
            self.listener.m_connections.dec()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    async def on_proxy(self, data: ProxyData) -> bool:
        self.client = client_from_proxy(data, self.client)
        refusal = self._rate_refusal() or self.ctx.limiter.bind(self.client.ip)
        if refusal is not None:
            self._count_refusal("CONNECT", refusal)
            await self.push(str(refusal))
            return False  # aiosmtpd closes the connection
        self._bound_ip = self.client.ip
        return True

    def close_for_shutdown(self) -> None:
        """Answer an idle session 421 and close it (busy ones finish their message first)."""
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(f"{SHUTTING_DOWN}\r\n".encode())
            self.transport.close()

    # -- replies ---------------------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, Reply):
            status = str(status)
        elif isinstance(status, str) and len(status) > 4 and status[3] == " ":
            if not _HAS_ENHANCED.match(status, 4):
                enhanced = DEFAULT_ENHANCED.get(status[:3])
                if enhanced is not None:
                    status = f"{status[:3]} {enhanced} {status[4:]}"
        elif isinstance(status, str) and len(status) == 3:
            enhanced = DEFAULT_ENHANCED.get(status)
            if enhanced is not None:
                status = f"{status} {enhanced}"
        if isinstance(status, str):
            status = status.encode("utf-8", "surrogateescape")
        # a permanent refusal is the client's error (temporary ones are our state: Kafka, load)
        if status[:1] == b"5" and not self._closing:
            verdict = self.counters.error()
            if verdict.close:
                self._end_session("SESSION", limits.TOO_MANY_ERRORS)
                return
            if verdict.delay:
                self.listener.m_error_delays.inc()
                await asyncio.sleep(verdict.delay)
        self._writer.write(status + b"\r\n")
        await self._writer.drain()

    def _count_refusal(self, command: str, reply: Reply) -> None:
        m.REFUSALS.labels(self.listener.name, command, reply.reason, reply.reply_class).inc()

    async def _refuse(self, command: str, reply: Reply) -> None:
        self._count_refusal(command, reply)
        await self.push(reply)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("%s: error in SMTP session with %s", self.listener.name, self.client.ip)
        return str(Reply(451, "4.3.0", "Local error in processing", "internal_error"))

    # -- transaction state ---------------------------------------------------------------------

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.tx = None

    def is_trusted(self) -> bool:
        assert self.session is not None
        return self.ctx.policy.trusted(
            self.client.ip,
            authenticated=bool(self.session.authenticated),
            listener_role=self.listener.role,
        )

    # -- commands --------------------------------------------------------------------------------

    def _junk(self, verb: str) -> bool:
        """Count a junk command; True when it ended the session."""
        if self.counters.command(verb):
            self._end_session(verb, limits.TOO_MANY_JUNK)
            return True
        return False

    async def smtp_NOOP(self, arg: str) -> None:
        if not self._junk("NOOP"):
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not self._junk("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not self._junk("VRFY"):
            await super().smtp_VRFY(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if not self._junk("HELP"):
            await super().smtp_HELP(arg)

    async def smtp_ETRN(self, arg: str) -> None:
        if not self._junk("ETRN"):
            await self.push("502 5.5.1 ETRN not supported")

    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await super().push(f"250 {self.hostname}")  # no enhanced code on HELO (RFC 2034)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.ctx.ingest.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if self.tls_context is not None and self._tls_protocol is None:
            lines.append("STARTTLS")
        if self.listener.credentials is not None and self._tls_protocol is not None:
            lines.append("AUTH PLAIN LOGIN")
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self._writer.write(text.encode("ascii"))
        await self._writer.drain()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if self.tx is not None:
            await self._refuse("MAIL", NESTED_MAIL)
            return
        assert self.session is not None
        policy = self.ctx.policy
        try:
            sender, params = policy.mail(arg, esmtp=self.session.extended_smtp)
        except SyntaxRefusal as refusal:
            await self._refuse("MAIL", refusal.reply)
            return
        login = self.auth_user
        if login is not None and policy.binds_sender(sender, authenticated=True):
            assert self.ctx.directory is not None  # config validation: binding needs one
            answered, allowed = await self.ctx.directory.sender_addresses(login)
            reply = policy.sender_owned(sender, login, allowed) if answered else None
            if not answered or reply is not None:
                await self._refuse("MAIL", reply or SENDER_LOOKUP_FAILED)
                return
        self.tx = Transaction(sender, params)
        await self.push(OK_SENDER)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        tx = self.tx
        if tx is None:
            await self._refuse("RCPT", NEED_MAIL)
            return
        assert self.session is not None
        policy = self.ctx.policy
        trusted = self.is_trusted()
        try:
            address, params = policy.rcpt(
                arg,
                smtputf8=tx.params.smtputf8,
                accepted=len(tx.recipients),
                trusted=trusted,
                esmtp=self.session.extended_smtp,
            )
        except SyntaxRefusal as refusal:
            await self._refuse("RCPT", refusal.reply)
            return
        if policy.needs_lookup(address, trusted=trusted):
            assert self.ctx.directory is not None  # config validation: verification needs one
            reply = policy.listed(address, await self.ctx.directory.is_user(address))
            if reply is not None:
                await self._refuse("RCPT", reply)
                return
        tx.recipients.append(
            recipient(address, notify=params.notify, orcpt=params.orcpt, other=params.other)
        )
        await self.push(OK_RECIPIENT)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.listener.credentials is None:
            await self._refuse("AUTH", AUTH_NOT_AVAILABLE)
            return
        if self._tls_protocol is not None and self.ctx.auth_failures.blocked(
            self.client.ip, self.loop.time()
        ):
            await self._refuse("AUTH", limits.AUTH_THROTTLED)  # no password check at all
            return
        await super().smtp_AUTH(arg)
        assert self.session is not None
        if self.session.authenticated:
            self.auth_user = self.session.auth_data
        elif self._tls_protocol is not None and arg:
            self._auth_failures += 1
            if self._auth_failures >= MAX_AUTH_FAILURES:
                await self._refuse("AUTH", TOO_MANY_AUTH_FAILURES)
                assert self.transport is not None
                self.transport.close()

    async def _check_credentials(self, login: bytes, password: bytes) -> AuthResult:
        creds = self.listener.credentials
        assert creds is not None
        user = await self.ctx.password_checker.check(creds, login, password)
        if user is None:
            self.ctx.auth_failures.failed(self.client.ip, self.loop.time())
            self._count_refusal("AUTH", Reply(535, "5.7.8", "", "auth_failed"))
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (B64Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check_credentials(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (B64Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check_credentials(login, password)

    # -- DATA ------------------------------------------------------------------------------------

    def _data_progress(self) -> None:
        self._reset_timeout(self.ctx.ingest.data_timeout_seconds)
        rate_due = self._rate_deadline()
        if rate_due is not None:
            self._arm(rate_due)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        tx = self.tx
        if tx is None:
            await self._refuse("DATA", NEED_MAIL)
            return
        if not tx.recipients:
            await self._refuse("DATA", NO_RECIPIENTS)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        ctx = self.ctx
        refusal = ctx.budget.start_message()
        if refusal is not None:
            self._set_post_data_state()
            await self._refuse("DATA", refusal)
            return
        m.INFLIGHT_MESSAGES.inc()
        self.busy = True  # shutdown lets this session finish its message and get its reply
        ctx.busy_inc()
        try:
            await self._data(ctx)
        finally:
            self.busy = False
            ctx.busy_dec()
            if self._expire_after_message:  # the lifetime ran out during this message
                self._end_session("SESSION", limits.SESSION_TOO_LONG)

    async def _data(self, ctx: IngestContext) -> None:
        """DATA after the checks: read, store, reply (the message slot is taken)."""
        tx = self.tx
        assert tx is not None
        budget = ctx.budget
        parser = DataParser(
            max_size=ctx.ingest.max_message_size,
            max_line_length=ctx.ingest.max_line_length,
            bare_newline=ctx.ingest.bare_newline,
            reserve=budget.reserve,
        )
        counted_bytes = 0
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self._data_parser = parser
            self._data_rate = limits.DataRate(
                ctx.ingest.min_data_rate, ctx.ingest.data_rate_grace_seconds, self.loop.time()
            )
            self._data_progress()
            try:
                await read_data(self._reader, parser, self._data_progress)
            except (ConnectionError, asyncio.IncompleteReadError):
                return  # the client went away (or was cut): nothing was accepted
            finally:
                self._data_rate = self._data_parser = None
            self.listener.m_bytes.inc(parser.wire_bytes)
            counted_bytes = parser.reserved
            m.INFLIGHT_BYTES.inc(counted_bytes)
            # the Kafka wait must not be cut short by the idle timer
            self._reset_timeout(
                max(ctx.ingest.command_timeout_seconds, ctx.ingest.kafka_ack_timeout_seconds + 10)
            )
            reply = await self._store(tx, parser)
        except asyncio.CancelledError:
            raise
        except Exception:
            # never fall back to reading the rest of a message as commands
            log.exception("%s: error in DATA from %s", self.listener.name, self.client.ip)
            with contextlib.suppress(Exception):
                await self._refuse("DATA", INTERNAL_ERROR)
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            budget.release(parser.reserved)
            budget.end_message()
            m.INFLIGHT_MESSAGES.dec()
            if counted_bytes:
                m.INFLIGHT_BYTES.dec(counted_bytes)
        self._set_post_data_state()
        if reply.ok:
            self.listener.m_accepted.inc()
            self.counters.delivered()
        else:
            m.MESSAGES_REFUSED.labels(self.listener.name, reply.reason, reply.reply_class).inc()
        await self.push(reply)
        self._reset_timeout()
        if ctx.shutting_down:
            self.close_for_shutdown()

    def _tls_info(self) -> TlsInfo | None:
        assert self.session is not None
        if not self.session.ssl:
            return None
        obj = self.session.ssl.get("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return {"version": obj.version() or "", "cipher": cipher[0] if cipher else ""}

    async def _store(self, tx: Transaction, parser: DataParser) -> Reply:
        if parser.status is not DataStatus.OK:
            return _DATA_REFUSALS[parser.status](self.ctx.config)
        raw = parser.message
        assert raw is not None and self.session is not None
        if self.listener.cfg.relay:  # inline: a message coming round again must not be relayed
            hops, limit = received_count(raw), self.ctx.config.relay.max_received_headers
            if hops > limit:
                log.warning(
                    "%s: mail loop from %s: %d Received headers (limit %d): refused",
                    self.listener.name,
                    self.client.ip,
                    hops,
                    limit,
                )
                return Reply(554, "5.4.6", f"Too many hops ({hops}): mail loop detected", "loop")
        received_at = schemas.now_millis()
        event_id = schemas.new_event_id()
        if len(raw) >= THREAD_HASH_BYTES:
            sha256 = await asyncio.to_thread(lambda: hashlib.sha256(raw).hexdigest())
        else:
            sha256 = hashlib.sha256(raw).hexdigest()
        event = message_received(
            event_id=event_id,
            received_at=received_at,
            ingest_host=self.ctx.ingest_host,
            listener=self.listener.name,
            listener_role=self.listener.role,
            client=client_info(
                self.client.ip,
                self.client.port,
                _utf8(self.session.host_name or ""),
                self.client.proxied_by,
            ),
            tls=self._tls_info(),
            auth_user=self.auth_user,
            mail_from=tx.sender,
            mail_params=tx.params.record(),
            recipients=tx.recipients,
            headers=selected_headers(raw),
            sha256=sha256,
            raw=raw,
        )
        # our Received: (and a Message-ID: when missing) before the bytes as received
        if len(raw) >= THREAD_HASH_BYTES:
            record = await asyncio.to_thread(traced, event, self.ctx.ingest.hostname)
        else:
            record = traced(event, self.ctx.ingest.hostname)
        value = schemas.encode(schemas.MESSAGE_RECEIVED, record)
        del event, record
        publisher = self.ctx.publisher
        assert publisher is not None
        started = time.monotonic()
        try:
            await publisher.publish(self.ctx.topic, event_id.encode("ascii"), value)
        except PublishError as exc:
            log.warning(
                "%s: message from %s not stored (%s): answering 4xx",
                self.listener.name,
                self.client.ip,
                exc,
            )
            if exc.queue_full:
                return QUEUE_FULL
            return KAFKA_TIMEOUT if exc.timeout else KAFKA_ERROR
        fault_point("ingest.after_ack")
        m.KAFKA_ACK.observe(time.monotonic() - started)
        m.MESSAGE_SIZE.observe(len(raw))
        return queued(event_id)


IngestSMTP._DIR = sorted(
    {n for cls in IngestSMTP.__mro__ for n in vars(cls) if n.startswith(("smtp_", "auth_"))}
)
IngestSMTP._SMTP_METHODS = [n for n in IngestSMTP._DIR if n.startswith("smtp_")]


UVLOOP_ENV = "MAILJOURNAL_INGEST_UVLOOP"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about 1.5x the messages per CPU second of asyncio's loop on small
    messages), unless ``MAILJOURNAL_INGEST_UVLOOP=0``; asyncio's own loop otherwise."""
    if os.environ.get(UVLOOP_ENV, "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class IngestServer:
    """The listeners of one process, the shared context and the Kafka publisher."""

    def __init__(self, config: Config, *, producer_extra: dict[str, Any] | None = None):
        self.config = config
        self.producer_extra = producer_extra
        self.listeners = [ListenerRuntime(cfg) for cfg in config.ingest.listeners]
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self.ports: dict[str, int] = {}
        self.ctx: IngestContext | None = None
        self.publisher: Publisher | None = None
        self._topic_check: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if not self.listeners:
            raise ValueError("no [[ingest.listeners]] configured")
        loop = asyncio.get_running_loop()
        self.publisher = Publisher(self.config, loop, extra=self.producer_extra)
        # tell the operator early about a missing topic, without delaying the listeners
        self._topic_check = loop.run_in_executor(
            None, self.publisher.check_topic, self.config.kafka.topics.messages.name
        )
        ctx = self.ctx = IngestContext(self.config, self.publisher)
        for lst in self.listeners:
            server = await loop.create_server(
                lambda lst=lst: IngestSMTP(ctx, lst),  # type: ignore[misc]
                host=lst.cfg.host,
                port=lst.cfg.port,
                reuse_port=True,
                backlog=1024,
            )
            self.servers[lst.name] = server
            self.ports[lst.name] = server.sockets[0].getsockname()[1]
            log.info(
                "listener %s (%s) on %s:%d", lst.name, lst.role, lst.cfg.host, self.ports[lst.name]
            )

    def ready(self) -> bool:
        return (
            self.ctx is not None
            and not self.ctx.shutting_down
            and self.publisher is not None
            and self.publisher.fatal is None
        )

    async def shutdown(self, grace: float | None = None) -> int:
        """Stop accepting, let messages in flight finish (up to ``grace`` seconds), answer idle
        sessions 421, flush the producer. Returns the records still unflushed (0 when clean)."""
        ctx = self.ctx
        if ctx is None:
            return 0
        if grace is None:
            grace = (
                self.config.ingest.data_timeout_seconds
                + self.config.ingest.kafka_ack_timeout_seconds
            )
        ctx.shutting_down = True
        for server in self.servers.values():
            server.close()
        for conn in list(ctx.connections):
            if not conn.busy:
                conn.close_for_shutdown()
        try:
            await asyncio.wait_for(ctx.idle.wait(), grace)
        except TimeoutError:
            log.warning("shutdown: %d messages still in flight after %.0fs", ctx.busy, grace)
        for conn in list(ctx.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._topic_check is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._topic_check, 10)
        ctx.password_checker.close()
        left = 0
        if self.publisher is not None:
            publisher = self.publisher
            left = await asyncio.to_thread(
                publisher.close, self.config.ingest.kafka_ack_timeout_seconds
            )
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if ctx.directory is not None:
            ctx.directory.close()
        return left
