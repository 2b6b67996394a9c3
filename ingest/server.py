"""The SMTP server of ingest: the commands, policy, our DATA path and Kafka.

One :class:`IngestSMTP` per connection, on :class:`ingest.connection.SmtpConnection` (the I/O:
lines, corked replies, DATA chunks, one timer) with :mod:`ingest.commands` (pure parsing and
reply texts). aiosmtpd is used only for its PROXY header parser (``aiosmtpd.proxy_protocol``).

- ``EHLO``: advertises PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, DSN, STARTTLS
  (before TLS) and AUTH PLAIN LOGIN (after TLS, on listeners with ``auth``);
- ``MAIL``/``RCPT``: our parser records every DSN/SIZE/BODY/SMTPUTF8 parameter and applies
  :class:`ingest.policy.Policy` (relay control, protected addresses, limits);
- ``DATA``: :mod:`ingest.datapath` parses the bytes as they arrive; the event is published and
  ``250`` is sent only after Kafka's delivery report;
- every reply without an enhanced status code gets the default one for its code;
- connection limits (global before anything, per client after the PROXY header), PROXY headers
  only from ``proxy_protocol_peers``, the session limits of :mod:`ingest.limits` (junk commands,
  error limits and delays, session lifetime, minimum DATA rate, connection rate and AUTH failures
  per client), AUTH checked on its own threads, graceful shutdown.

A command that needs no I/O (most of them) is answered synchronously within the read that
brought it; one that waits (a directory lookup, AUTH, Kafka, an error delay, STARTTLS) returns
a coroutine, and no further command is read until it ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.proxy_protocol import ProxyData, get_proxy

import schemas
from ingest import limits
from ingest import metrics as m
from ingest.auth import Credentials, PasswordChecker
from ingest.commands import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    LINE_LIMIT,
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USER_CHALLENGE,
    b64,
    command_too_long,
    ehlo_reply,
    help_reply,
    parse_line,
    reply_bytes,
    split_plain,
    vrfy_address,
)
from ingest.connection import SmtpConnection
from ingest.datapath import DataParser, DataStatus
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
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing", "internal_error")

_DATA_REFUSALS: dict[DataStatus, Callable[[Config], Reply]] = {
    DataStatus.TOO_BIG: lambda c: size_exceeded(c.ingest.max_message_size),
    DataStatus.LINE_TOO_LONG: lambda c: line_too_long(c.ingest.max_line_length),
    DataStatus.BARE_NEWLINE: lambda c: BARE_NEWLINE,
    DataStatus.NO_MEMORY: lambda c: BUSY_BYTES,
}


def _utf8(text: str) -> str:
    """Command arguments are decoded with surrogateescape; events need valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def sleep_at_least(seconds: float) -> None:
    """Sleep no less than ``seconds``: uvloop's timers count whole milliseconds and fire up to
    one early, and an error delay is a promise (a client must not see it shortened)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left + 0.001)


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


class IngestSMTP(SmtpConnection):
    """One SMTP session: the commands on :class:`ingest.connection.SmtpConnection`'s I/O."""

    def __init__(self, ctx: IngestContext, listener: ListenerRuntime):
        cfg = ctx.ingest
        super().__init__(ctx.loop, cfg.command_timeout_seconds)
        self.ctx = ctx
        self.listener = listener
        self.hostname = cfg.hostname
        self.tls_context = listener.tls_context
        self.require_starttls = bool(self.tls_context and listener.cfg.require_starttls)
        self.client = ClientAddress("unknown", 0)
        self.helo_name: str | None = None
        self.esmtp = False
        self.tls_object: ssl.SSLObject | None = None
        self.tx: Transaction | None = None
        self.busy = False
        self.auth_user: str | None = None
        self._refused = False
        self._released = True
        self._bound_ip: str | None = None
        self._auth_failures = 0
        self._bogus = BOGUS_LIMIT
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
        self._proxy_reader: asyncio.StreamReader | None = None

    # -- timeouts ----------------------------------------------------------------------------------

    def _rate_deadline(self) -> float | None:
        """In DATA: when the phase falls below ``min_data_rate`` unless more bytes arrive."""
        if self._data_rate is None or self._data_parser is None:
            return None
        return self._data_rate.deadline(self._data_parser.wire_bytes)

    def timer_fired(self, now: float) -> float | None:
        rate_due = self._rate_deadline()
        if rate_due is not None and now >= rate_due:
            self._end_session("DATA", limits.DATA_TOO_SLOW)
            return None
        due = self._deadline if rate_due is None else min(self._deadline, rate_due)
        if now < due:
            return due
        if not self.closing:
            self._count_refusal("TIMEOUT", TIMED_OUT)
            self.send(reply_bytes(TIMED_OUT))
        self.close()
        return None

    def _end_session(self, command: str, reply: Reply) -> None:
        """Answer a final ``421`` and close (a limit ended the session)."""
        self._closing = True
        if self.closing:
            return
        self._count_refusal(command, reply)
        log.info("%s: %s: %s", self.listener.name, self.client.ip, reply)
        self.send(reply_bytes(reply))
        self.close()

    def _lifetime_cb(self) -> None:
        if self.busy:  # a message in DATA gets its reply first
            self._expire_after_message = True
        else:
            self._end_session("SESSION", limits.SESSION_TOO_LONG)

    # -- connection lifecycle ------------------------------------------------------------------

    def _refuse_connection(self, transport: asyncio.BaseTransport, reply: Reply) -> None:
        self._refused = True
        m.REFUSALS.labels(self.listener.name, "CONNECT", reply.reason, reply.reply_class).inc()
        with contextlib.suppress(Exception):
            transport.write(reply_bytes(reply))  # type: ignore[attr-defined]
        transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
        if self.listener.cfg.proxy_protocol:
            # the header comes before the banner; aiosmtpd's parser reads it from a stream
            self._proxy_reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=self.loop)
            self.reset_timeout(PROXY_TIMEOUT_SECONDS)
            self.wait(self._read_proxy(self._proxy_reader))
            return
        self._banner()

    def _banner(self) -> None:
        self.reset_timeout()
        self.send(f"220 {self.hostname} {IDENT}\r\n".encode())
        self.flush()

    def data_received(self, data: bytes) -> None:
        reader = self._proxy_reader
        if reader is not None:
            reader.feed_data(data)
            return
        super().data_received(data)

    async def _read_proxy(self, reader: asyncio.StreamReader) -> None:
        data = await get_proxy(reader)
        self._proxy_reader = None
        reader.feed_eof()
        rest = await reader.read()  # what came after the header
        if rest:
            self._buf[:0] = rest
        if not data:
            log.warning("%s: invalid PROXY header from %s", self.listener.name, self.client.ip)
            self.close()
            return
        if not await self.on_proxy(data):
            self.close()
            return
        self._banner()

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

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._refused:
            return
        if self._lifetime_handle is not None:
            self._lifetime_handle.cancel()
            self._lifetime_handle = None
        parser = self._data_parser
        if parser is not None:  # gone in the middle of DATA: nothing was accepted
            self._data_rate = self._data_parser = None
            self._release_message(parser, 0)
            self._message_done()
        if not self._released:
            self._release()
            self.ctx.connections.discard(self)
            self.listener.m_connections.dec()

    async def on_proxy(self, data: ProxyData) -> bool:
        self.client = client_from_proxy(data, self.client)
        refusal = self._rate_refusal() or self.ctx.limiter.bind(self.client.ip)
        if refusal is not None:
            self._count_refusal("CONNECT", refusal)
            await self.push(refusal)
            return False
        self._bound_ip = self.client.ip
        return True

    def close_for_shutdown(self) -> None:
        """Answer an idle session 421 and close it (busy ones finish their message first)."""
        if not self.closing:
            self.send(reply_bytes(SHUTTING_DOWN))
            self.close()

    # -- replies ---------------------------------------------------------------------------------

    def _error_delay(self, data: bytes) -> float | None:
        """Count a permanent refusal (the client's error; temporary ones are our state: Kafka,
        load): the seconds to wait before it, or None when it ended the session."""
        if data[:1] != b"5" or self._closing:
            return 0.0
        verdict = self.counters.error()
        if verdict.close:
            self._end_session("SESSION", limits.TOO_MANY_ERRORS)
            return None
        if verdict.delay:
            self.listener.m_error_delays.inc()
        return verdict.delay

    def reply(self, status: Reply | str | bytes) -> None:
        """Queue a reply (in a command handler, outside a task)."""
        data = reply_bytes(status)
        delay = self._error_delay(data)
        if delay is None:
            return
        if delay:
            self.wait(self._delayed(data, delay))
            return
        self.send(data)

    async def _delayed(self, data: bytes, delay: float) -> None:
        await sleep_at_least(delay)
        self.send(data)

    async def push(self, status: Reply | str | bytes) -> None:
        """Send a reply from a task."""
        data = reply_bytes(status)
        delay = self._error_delay(data)
        if delay is None:
            return
        if delay:
            self.flush()
            await sleep_at_least(delay)
        self.send(data)
        self.flush()

    def _count_refusal(self, command: str, reply: Reply) -> None:
        m.REFUSALS.labels(self.listener.name, command, reply.reason, reply.reply_class).inc()

    def _refuse(self, command: str, reply: Reply) -> None:
        self._count_refusal(command, reply)
        self.reply(reply)

    async def _refuse_async(self, command: str, reply: Reply) -> None:
        self._count_refusal(command, reply)
        await self.push(reply)

    def task_failed(self, error: BaseException) -> None:
        log.error(
            "%s: error in SMTP session with %s",
            self.listener.name,
            self.client.ip,
            exc_info=error,
        )
        self.send(reply_bytes(LOCAL_ERROR))

    def is_trusted(self) -> bool:
        return self.ctx.policy.trusted(
            self.client.ip,
            authenticated=self.auth_user is not None,
            listener_role=self.listener.role,
        )

    # -- commands --------------------------------------------------------------------------------

    def line_too_long(self) -> None:
        self.reply("500 Command line too long")

    def line_received(self, line: bytes) -> None:
        parsed = parse_line(line)
        if parsed is None:
            self.reply("500 Error: bad syntax")
            return
        verb, arg = parsed
        if command_too_long(verb, len(line.rstrip(b"\r\n")), esmtp=self.esmtp):
            self.reply("500 Command line too long")
            return
        if (
            self.require_starttls
            and self.tls_object is None
            and verb not in ALLOWED_BEFORE_STARTTLS
        ):
            self.reply("530 Must issue a STARTTLS command first")  # RFC 3207 4
            return
        handler = _COMMANDS.get(verb)
        if handler is None:
            self._bogus -= 1
            if self._bogus < 1:
                self.reply("502 5.5.1 Too many unrecognized commands, goodbye.")
                self.close()
                return
            self.reply(f'500 Error: command "{verb}" not recognized')
            return
        self.reset_timeout()
        try:
            step = handler(self, arg)
        except Exception:
            log.exception("%s: error in SMTP session with %s", self.listener.name, self.client.ip)
            self.reply(LOCAL_ERROR)
            return
        if step is not None:
            self.wait(step)

    def _junk(self, verb: str) -> bool:
        """Count a junk command; True when it ended the session."""
        if self.counters.command(verb):
            self._end_session(verb, limits.TOO_MANY_JUNK)
            return True
        return False

    def _helo_needed(self, helo: str = "HELO") -> bool:
        if self.helo_name:
            return False
        self.reply(f"503 Error: send {helo} first")
        return True

    def smtp_NOOP(self, arg: str | None) -> Step:
        if not self._junk("NOOP"):
            self.reply("250 OK")
        return None

    def smtp_RSET(self, arg: str | None) -> Step:
        if self._junk("RSET"):
            return None
        if arg:
            self.reply("501 Syntax: RSET")
            return None
        self.tx = None
        self.reply("250 OK")
        return None

    def smtp_VRFY(self, arg: str | None) -> Step:
        if self._junk("VRFY"):
            return None
        if not arg:
            self.reply("501 Syntax: VRFY <address>")
        elif vrfy_address(arg) is None:
            self.reply("502 Could not VRFY " + arg)
        else:
            self.reply("252 Cannot VRFY user, but will accept message and attempt delivery")
        return None

    def smtp_HELP(self, arg: str | None) -> Step:
        if not self._junk("HELP"):
            self.reply(help_reply(arg, esmtp=self.esmtp, tls=self.tls_context is not None))
        return None

    def smtp_ETRN(self, arg: str | None) -> Step:
        if not self._junk("ETRN"):
            self.reply("502 5.5.1 ETRN not supported")
        return None

    def smtp_EXPN(self, arg: str | None) -> Step:
        self.reply("502 EXPN not implemented")
        return None

    def smtp_QUIT(self, arg: str | None) -> Step:
        if arg:
            self.reply("501 Syntax: QUIT")
            return None
        self.send(reply_bytes("221 Bye"))
        self.close()
        return None

    def smtp_HELO(self, hostname: str | None) -> Step:
        if not hostname:
            self.reply("501 Syntax: HELO hostname")
            return None
        self.tx = None
        self.esmtp = False
        self.helo_name = hostname
        self.send(f"250 {self.hostname}\r\n".encode())  # no enhanced code on HELO (RFC 2034)
        return None

    def smtp_EHLO(self, hostname: str | None) -> Step:
        if not hostname:
            self.reply("501 Syntax: EHLO hostname")
            return None
        self.tx = None
        self.esmtp = True
        self.helo_name = hostname
        tls = self.tls_object is not None
        self.send(
            ehlo_reply(
                self.hostname,
                self.ctx.ingest.max_message_size,
                starttls=self.tls_context is not None and not tls,
                auth=self.listener.credentials is not None and tls,
            )
        )
        return None

    def smtp_STARTTLS(self, arg: str | None) -> Step:
        if arg:
            self.reply("501 Syntax: STARTTLS")
            return None
        if self.tls_context is None:
            self.reply("454 TLS not available")
            return None
        if self.tls_object is not None:
            self.reply("503 5.5.1 Error: TLS already active")
            return None
        self.send(b"220 Ready to start TLS\r\n")
        self.flush()
        self.discard_input()  # RFC 3207 4.2: nothing sent before the handshake counts
        self.pause_reading_now()
        return self._starttls(self.tls_context)

    async def _starttls(self, context: ssl.SSLContext) -> None:
        if not await self.upgrade_tls(context, self.ctx.ingest.command_timeout_seconds):
            return
        assert self.transport is not None
        self.tls_object = self.transport.get_extra_info("ssl_object")
        # RFC 3207 4.2: the client starts again with EHLO; what it said before is forgotten
        self.helo_name = None
        self.esmtp = False
        self.tx = None
        self.reset_timeout()

    def smtp_MAIL(self, arg: str | None) -> Step:
        if self._helo_needed():
            return None
        if self.tx is not None:
            self._refuse("MAIL", NESTED_MAIL)
            return None
        policy = self.ctx.policy
        try:
            sender, params = policy.mail(arg, esmtp=self.esmtp)
        except SyntaxRefusal as refusal:
            self._refuse("MAIL", refusal.reply)
            return None
        login = self.auth_user
        if login is not None and policy.binds_sender(sender, authenticated=True):
            return self._mail_bound(sender, params, login)
        self.tx = Transaction(sender, params)
        self.reply(OK_SENDER)
        return None

    async def _mail_bound(self, sender: str, params: Any, login: str) -> None:
        assert self.ctx.directory is not None  # config validation: binding needs one
        answered, allowed = await self.ctx.directory.sender_addresses(login)
        reply = self.ctx.policy.sender_owned(sender, login, allowed) if answered else None
        if not answered or reply is not None:
            await self._refuse_async("MAIL", reply or SENDER_LOOKUP_FAILED)
            return
        self.tx = Transaction(sender, params)
        await self.push(OK_SENDER)

    def smtp_RCPT(self, arg: str | None) -> Step:
        if self._helo_needed():
            return None
        tx = self.tx
        if tx is None:
            self._refuse("RCPT", NEED_MAIL)
            return None
        policy = self.ctx.policy
        trusted = self.is_trusted()
        try:
            address, params = policy.rcpt(
                arg,
                smtputf8=tx.params.smtputf8,
                accepted=len(tx.recipients),
                trusted=trusted,
                esmtp=self.esmtp,
            )
        except SyntaxRefusal as refusal:
            self._refuse("RCPT", refusal.reply)
            return None
        if policy.needs_lookup(address, trusted=trusted):
            return self._rcpt_verified(tx, address, params)
        tx.recipients.append(
            recipient(address, notify=params.notify, orcpt=params.orcpt, other=params.other)
        )
        self.reply(OK_RECIPIENT)
        return None

    async def _rcpt_verified(self, tx: Transaction, address: str, params: Any) -> None:
        assert self.ctx.directory is not None  # config validation: verification needs one
        reply = self.ctx.policy.listed(address, await self.ctx.directory.is_user(address))
        if reply is not None:
            await self._refuse_async("RCPT", reply)
            return
        tx.recipients.append(
            recipient(address, notify=params.notify, orcpt=params.orcpt, other=params.other)
        )
        await self.push(OK_RECIPIENT)

    # -- AUTH ------------------------------------------------------------------------------------

    def smtp_AUTH(self, arg: str | None) -> Step:
        if self.listener.credentials is None:
            self._refuse("AUTH", AUTH_NOT_AVAILABLE)
            return None
        tls = self.tls_object is not None
        if tls and self.ctx.auth_failures.blocked(self.client.ip, self.loop.time()):
            self._refuse("AUTH", limits.AUTH_THROTTLED)  # no password check at all
            return None
        if self._helo_needed("EHLO"):
            return None
        if not self.esmtp:
            self.reply("500 Error: command 'AUTH' not recognized")
            return None
        if not tls:
            self.reply("538 5.7.11 Encryption required for requested authentication mechanism")
            return None
        if self.auth_user is not None:
            self.reply("503 Already authenticated")
            return None
        if not arg:
            self.reply("501 Not enough value")
            return None
        args = arg.split()
        if len(args) > 2:
            self.reply("501 Too many values")
            return self._auth_failed()
        mechanism = args[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            self.reply("504 5.5.4 Unrecognized authentication type")
            return self._auth_failed()
        return self._auth(mechanism, args)

    async def _auth_failed(self) -> None:
        """A failed AUTH over TLS: the third closes the session."""
        self._auth_failures += 1
        if self._auth_failures >= MAX_AUTH_FAILURES:
            await self._refuse_async("AUTH", TOO_MANY_AUTH_FAILURES)
            self.close()

    async def _auth(self, mechanism: str, args: list[str]) -> None:
        if mechanism == "PLAIN":
            user = await self._auth_plain(args)
        else:
            user = await self._auth_login(args)
        if user is None:
            await self._auth_failed()
            return
        self.auth_user = user
        await self.push("235 2.7.0 Authentication successful")

    async def _challenge(self, text: bytes) -> bytes | None:
        """A ``334`` challenge; the client's decoded answer, None when it aborted or sent no
        base64 (answered here)."""
        await self.push(b"334 " + base64.b64encode(text))
        blob = (await self.read_line()).strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return None
        decoded = b64(blob)
        if decoded is None:
            await self.push("501 5.5.2 Can't decode base64")
        return decoded

    async def _initial(self, args: list[str]) -> bytes | None:
        decoded = b64(args[1].encode())
        if decoded is None:
            await self.push("501 5.5.2 Can't decode base64")
        return decoded

    async def _auth_plain(self, args: list[str]) -> str | None:
        blob = await (self._challenge(b"") if len(args) == 1 else self._initial(args))
        if blob is None:
            return None
        pair = split_plain(blob)
        if pair is None:
            await self.push("501 5.5.2 Can't split auth value")
            return None
        return await self._check_credentials(*pair)

    async def _auth_login(self, args: list[str]) -> str | None:
        if len(args) == 1:
            login = await self._challenge(LOGIN_USER_CHALLENGE)
        else:
            login = await self._initial(args)
        if login is None:
            return None
        password = await self._challenge(LOGIN_PASSWORD_CHALLENGE)
        if password is None:
            return None
        return await self._check_credentials(login, password)

    async def _check_credentials(self, login: bytes, password: bytes) -> str | None:
        creds = self.listener.credentials
        assert creds is not None
        user = await self.ctx.password_checker.check(creds, login, password)
        if user is None:
            self.ctx.auth_failures.failed(self.client.ip, self.loop.time())
            self._count_refusal("AUTH", Reply(535, "5.7.8", "", "auth_failed"))
            await self.push("535 5.7.8 Authentication credentials invalid")
        return user

    # -- DATA ------------------------------------------------------------------------------------

    def data_progress(self) -> None:
        self.reset_timeout(self.ctx.ingest.data_timeout_seconds)
        rate_due = self._rate_deadline()
        if rate_due is not None:
            self.arm(rate_due)

    def smtp_DATA(self, arg: str | None) -> Step:
        if self._helo_needed():
            return None
        tx = self.tx
        if tx is None:
            self._refuse("DATA", NEED_MAIL)
            return None
        if not tx.recipients:
            self._refuse("DATA", NO_RECIPIENTS)
            return None
        if arg:
            self.reply("501 Syntax: DATA")
            return None
        ctx = self.ctx
        refusal = ctx.budget.start_message()
        if refusal is not None:
            self.tx = None
            self._refuse("DATA", refusal)
            return None
        m.INFLIGHT_MESSAGES.inc()
        self.busy = True  # shutdown lets this session finish its message and get its reply
        ctx.busy_inc()
        parser = DataParser(
            max_size=ctx.ingest.max_message_size,
            max_line_length=ctx.ingest.max_line_length,
            bare_newline=ctx.ingest.bare_newline,
            reserve=ctx.budget.reserve,
        )
        self.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self._data_parser = parser
        self._data_rate = limits.DataRate(
            ctx.ingest.min_data_rate, ctx.ingest.data_rate_grace_seconds, self.loop.time()
        )
        self.data_progress()
        self.start_data(parser)
        return None

    def _release_message(self, parser: DataParser, counted_bytes: int) -> None:
        """The message slot and its bytes back to the in-flight budget."""
        budget = self.ctx.budget
        budget.release(parser.reserved)
        budget.end_message()
        m.INFLIGHT_MESSAGES.dec()
        if counted_bytes:
            m.INFLIGHT_BYTES.dec(counted_bytes)

    def _message_done(self) -> None:
        self.busy = False
        self.ctx.busy_dec()

    def data_complete(self, parser: DataParser) -> None:
        self._data_rate = self._data_parser = None
        tx = self.tx
        assert tx is not None
        self.wait(self._data(tx, parser), keep_running=True)

    async def _data(self, tx: Transaction, parser: DataParser) -> None:
        try:
            await self._answer_data(tx, parser)
        finally:
            self._message_done()
        if self._expire_after_message:  # the lifetime ran out during this message
            self._end_session("SESSION", limits.SESSION_TOO_LONG)

    async def _answer_data(self, tx: Transaction, parser: DataParser) -> None:
        """After the terminator: store, reply (the message slot is taken)."""
        ctx = self.ctx
        counted_bytes = 0
        try:
            self.listener.m_bytes.inc(parser.wire_bytes)
            counted_bytes = parser.reserved
            m.INFLIGHT_BYTES.inc(counted_bytes)
            # the Kafka wait must not be cut short by the idle timer
            self.reset_timeout(
                max(ctx.ingest.command_timeout_seconds, ctx.ingest.kafka_ack_timeout_seconds + 10)
            )
            reply = await self._store(tx, parser)
        except asyncio.CancelledError:
            raise
        except Exception:
            # never fall back to reading the rest of a message as commands
            log.exception("%s: error in DATA from %s", self.listener.name, self.client.ip)
            with contextlib.suppress(Exception):
                await self._refuse_async("DATA", INTERNAL_ERROR)
            self.close()
            return
        finally:
            self._release_message(parser, counted_bytes)
        self.tx = None
        if reply.ok:
            self.listener.m_accepted.inc()
            self.counters.delivered()
        else:
            m.MESSAGES_REFUSED.labels(self.listener.name, reply.reason, reply.reply_class).inc()
        await self.push(reply)
        self.reset_timeout()
        if ctx.shutting_down:
            self.close_for_shutdown()

    def _tls_info(self) -> TlsInfo | None:
        obj = self.tls_object
        if obj is None:
            return None
        cipher = obj.cipher()
        return {"version": obj.version() or "", "cipher": cipher[0] if cipher else ""}

    async def _store(self, tx: Transaction, parser: DataParser) -> Reply:
        if parser.status is not DataStatus.OK:
            return _DATA_REFUSALS[parser.status](self.ctx.config)
        raw = parser.message
        assert raw is not None
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
            sha256 = await asyncio.to_thread(_sha256_hex, raw)
        else:
            sha256 = _sha256_hex(raw)
        event = message_received(
            event_id=event_id,
            received_at=received_at,
            ingest_host=self.ctx.ingest_host,
            listener=self.listener.name,
            listener_role=self.listener.role,
            client=client_info(
                self.client.ip,
                self.client.port,
                _utf8(self.helo_name or ""),
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
            body_facts=parser.facts().record(),
        )
        # our Received: (and a Message-ID: when missing) before the bytes as received
        if len(raw) >= THREAD_HASH_BYTES:
            record = await asyncio.to_thread(traced, event, self.ctx.ingest.hostname)
        else:
            record = traced(event, self.ctx.ingest.hostname)
        value = schemas.encode(schemas.MESSAGE_RECEIVED, record)
        del event, record
        size = len(raw)
        publisher = self.ctx.publisher
        assert publisher is not None
        started = time.monotonic()
        try:
            stored = publisher.submit(self.ctx.topic, event_id.encode("ascii"), value)
            # librdkafka holds its copy now: while the ack is awaited (the longest a message is
            # in memory under load) this session holds no other (issue 17, peak RSS)
            del raw, value
            parser.message = None
            await stored
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
        m.MESSAGE_SIZE.observe(size)
        return queued(event_id)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Step = Coroutine[Any, Any, None] | None
_COMMANDS: dict[str, Callable[[IngestSMTP, str | None], Step]] = {
    name[5:]: getattr(IngestSMTP, name) for name in dir(IngestSMTP) if name.startswith("smtp_")
}


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
