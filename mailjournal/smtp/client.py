"""SMTP client side of delivery: a pool of reused sessions to the configured smart host.

Why the standard library's ``smtplib`` on threads (and not ``aiosmtplib``): the Kafka client
(confluent-kafka) is synchronous and fastest driven from plain threads; a send spends its time
waiting on the network, where the GIL is released, so a fixed pool of ``delivery.concurrency``
threads, each borrowing one session, gives the bounded parallelism directly. ``smtplib`` also
sends a bytes message unaltered apart from dot-stuffing (``aiosmtplib`` rewrites line endings
itself) and exposes every reply, which the outcome decision and the audit trail need.

Each session: connect, EHLO, STARTTLS per ``smart_host.starttls`` (``off``; ``opportunistic``:
when offered; ``required``: or fail), the certificate verified against ``ca_file`` or the system
store when ``tls_verify``, AUTH when a username is configured (only inside TLS: without it the
session fails before the credentials are sent), then transactions. A session is reused for later
messages: ``RSET`` before each reuse clears any leftover state and proves the connection still
alive, so a connection the server dropped while idle is replaced before a
transaction starts rather than failing one.

A journal copy (:meth:`SmtpClient.send`, one recipient) and a relayed original
(:meth:`SmtpClient.send_envelope`, the recipients of one next hop) take the same transaction:
MAIL FROM, a RCPT TO per recipient, DATA, pipelined (RFC 2920) when the server offers it. They
differ only in where their ESMTP parameters come from (:class:`_CopyParameters`,
:class:`_RelayedParameters`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailjournal.config import DeliveryConfig, SmartHostConfig
from mailjournal.smtp import metrics
from mailjournal.smtp.outcomes import SmtpResult
from mailjournal.smtp.wire import Outgoing

log = logging.getLogger(__name__)

# a server drops an idle session after its own timeout (Postfix: 300 s); renew ours before
REUSE_TIME_LIMIT_SECONDS = 240.0
REUSE_IDLE_LIMIT_SECONDS = 60.0


class SessionError(Exception):
    """A session could not be set up or broke down; the attempt is temporary by nature."""

    def __init__(self, stage: str, code: int | None, text: str):
        super().__init__(f"{stage}: {code or ''} {text}".strip())
        self.stage, self.code, self.text = stage, code, text


class _StaleSession(Exception):
    """A reused session did not answer its pipelined RSET: replace it, nothing was sent."""


def _decode_reply(msg: bytes | str) -> str:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
    return " ".join(line.strip() for line in text.splitlines()).strip()


def tls_context(cfg: SmartHostConfig) -> ssl.SSLContext:
    """Verification against ``ca_file`` (a pinned CA) or the system store, with the host name,
    unless ``tls_verify`` is off; the client certificate when one is configured."""
    if cfg.tls_verify:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.client_cert_file is not None:
        ctx.load_cert_chain(
            str(cfg.client_cert_file),
            str(cfg.client_key_file) if cfg.client_key_file else None,
        )
    return ctx


def read_credentials(cfg: SmartHostConfig) -> tuple[str | None, str | None]:
    """(username, password) for AUTH: ``credentials_file`` (one ``username:password`` line) or
    ``username`` with ``password_file``; (None, None) without AUTH. ``ValueError`` naming the
    key when the file holds no such line."""
    if cfg.credentials_file is not None:
        lines = cfg.credentials_file.read_text().strip().splitlines()
        user, sep, secret = (lines[0] if lines else "").partition(":")
        if not sep or not user:
            raise ValueError(
                f"credentials_file {cfg.credentials_file}: expected one 'username:password' line"
            )
        return user, secret
    if cfg.username:
        password = cfg.password_file.read_text().strip() if cfg.password_file else None
        return cfg.username, password
    return None, None


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lower-case hex (the form ``tls_fingerprints`` holds)."""
    return hashlib.sha256(der).hexdigest()


@dataclass
class Session:
    smtp: smtplib.SMTP
    opened: float
    last_used: float
    sent: int = 0
    tls: bool = False
    features: dict[str, str] = field(default_factory=dict)
    unchecked: bool = False
    """Reused without its RSET yet: the RSET goes first in the next pipelined command group."""

    def reusable(self, now: float) -> bool:
        return (
            now - self.opened < REUSE_TIME_LIMIT_SECONDS
            and now - self.last_used < REUSE_IDLE_LIMIT_SECONDS
        )


class SmtpClient:
    """Thread-safe: any number of threads call :meth:`send`; each borrows an idle session or
    opens one. The number of sessions is bounded by the number of calling threads."""

    def __init__(
        self,
        cfg: DeliveryConfig,
        *,
        local_hostname: str | None = None,
        host: SmartHostConfig | None = None,
    ):
        self._cfg = cfg
        self._host = host or cfg.smart_host  # the relay passes one next hop per client
        self._local_hostname = local_hostname or self._host.helo_name or socket.getfqdn()
        self._idle: queue.LifoQueue[Session] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._open = 0
        self._closed = False
        self._username, self._password = read_credentials(self._host)
        self._ssl = tls_context(self._host) if self._host.starttls != "off" else None

    @property
    def address(self) -> str:
        return f"{self._host.host}:{self._host.port}"

    @property
    def open_sessions(self) -> int:
        return self._open

    # -- sessions --------------------------------------------------------------------------

    def _connect(self) -> Session:
        cfg, host = self._cfg, self._host
        smtp = smtplib.SMTP(
            local_hostname=self._local_hostname, timeout=cfg.connect_timeout_seconds
        )
        stage = "connect"
        try:
            # smtplib takes the name to verify the certificate against from the constructor
            smtp._host = host.host  # type: ignore[attr-defined]
            try:
                code, msg = smtp.connect(host.host, host.port)
            except smtplib.SMTPConnectError as exc:
                raise SessionError(
                    "greeting", exc.smtp_code, _decode_reply(exc.smtp_error)
                ) from None
            if code != 220:
                raise SessionError("greeting", code, _decode_reply(msg))
            assert smtp.sock is not None
            smtp.sock.settimeout(cfg.command_timeout_seconds)
            stage = "ehlo"
            code, msg = smtp.ehlo()
            if code != 250:
                raise SessionError("ehlo", code, _decode_reply(msg))
            tls = False
            if host.starttls != "off":
                stage = "starttls"
                if smtp.has_extn("starttls"):
                    code, msg = smtp.starttls(context=self._ssl)
                    if code != 220:
                        raise SessionError("starttls", code, _decode_reply(msg))
                    self._check_pin(smtp)
                    tls = True
                    stage = "ehlo"
                    code, msg = smtp.ehlo()
                    if code != 250:
                        raise SessionError("ehlo", code, _decode_reply(msg))
                elif host.starttls == "required":
                    raise SessionError(
                        "starttls", None, "smart host does not offer STARTTLS (starttls = required)"
                    )
            if self._username:
                stage = "auth"
                if not tls:
                    self._refuse_auth_without_tls()
                if not smtp.has_extn("auth"):
                    raise SessionError("auth", None, "smart host does not offer AUTH")
                try:
                    smtp.login(self._username, self._password or "")
                except smtplib.SMTPAuthenticationError as exc:
                    raise SessionError(
                        "auth", exc.smtp_code, _decode_reply(exc.smtp_error)
                    ) from None
                except smtplib.SMTPException as exc:
                    raise SessionError("auth", None, str(exc)) from None
        except SessionError:
            _quietly_close(smtp)
            metrics.SMTP_CONNECTS.labels("error").inc()
            raise
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            _quietly_close(smtp)
            metrics.SMTP_CONNECTS.labels("error").inc()
            reply_code: int | None = getattr(exc, "smtp_code", None)
            text = (
                _decode_reply(getattr(exc, "smtp_error", b"")) if reply_code else _error_text(exc)
            )
            raise SessionError(stage, reply_code, text) from None
        now = time.monotonic()
        with self._lock:
            self._open += 1
        metrics.SMTP_CONNECTIONS.inc()
        metrics.SMTP_CONNECTS.labels("ok").inc()
        return Session(smtp, now, now, tls=tls, features=dict(smtp.esmtp_features))

    def _check_pin(self, smtp: smtplib.SMTP) -> None:
        """With ``tls_fingerprints``: the server's certificate must be one of them."""
        pins = self._host.tls_fingerprints
        if not pins:
            return
        sock = smtp.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        got = certificate_fingerprint(der) if der else "none"
        if got not in pins:
            raise SessionError(
                "starttls",
                None,
                f"4.7.5 certificate of {self.address} (sha256 {got}) is not one of the pinned "
                "tls_fingerprints",
            )

    def _refuse_auth_without_tls(self) -> None:
        """Credentials only ever travel inside TLS: a session where STARTTLS was off, not
        offered (opportunistic) or is not yet negotiated ends before AUTH, a temporary failure
        retried like any other, so a downgrade by a man in the middle never sees the password."""
        metrics.SMTP_AUTH_WITHOUT_TLS.inc()
        log.warning(
            "not authenticating to %s as %r: no TLS on the session (starttls = %s); the "
            "password is never sent in clear, the copy is retried",
            self.address,
            self._username,
            self._host.starttls,
        )
        raise SessionError(
            "auth",
            None,
            f"4.7.11 AUTH needs TLS and none was negotiated with {self.address} "
            f"(starttls = {self._host.starttls}): credentials not sent",
        )

    def _discard(self, session: Session, *, quit: bool = False) -> None:
        if quit:
            with contextlib.suppress(Exception):
                session.smtp.quit()
        _quietly_close(session.smtp)
        with self._lock:
            self._open -= 1
        metrics.SMTP_CONNECTIONS.dec()

    def _borrow(self) -> Session:
        """An idle session that answers RSET, or a new one. With PIPELINING the RSET is not sent
        here but first in the transaction's command group (one round trip instead of two); a
        session that fails it is replaced the same way (:class:`_StaleSession`)."""
        now = time.monotonic()
        while True:
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                return self._connect()
            if not session.reusable(now):
                self._discard(session, quit=True)
                continue
            if "pipelining" in session.features:
                session.unchecked = True
                return session
            try:
                code, _ = session.smtp.rset()
            except (OSError, smtplib.SMTPException):
                code = -1
            if code == 250:
                return session
            self._discard(session)

    def _give_back(self, session: Session) -> None:
        session.last_used = time.monotonic()
        if self._closed:
            self._discard(session, quit=True)
        else:
            self._idle.put(session)

    def _finish(self, session: Session, keep: bool, started: float) -> float:
        """End one use of ``session``: back to the pool, or closed when it cannot be trusted
        any more; returns and records the transaction's seconds."""
        seconds = time.monotonic() - started
        if keep:
            session.sent += 1
            self._give_back(session)
        else:
            self._discard(session)
        metrics.SMTP_SECONDS.observe(seconds)
        return seconds

    def _exception_result(self, exc: BaseException) -> SmtpResult:
        """The result of a transaction that an exception ended during DATA (a reply, when the
        exception carries one, else a temporary connection-level failure)."""
        code = getattr(exc, "smtp_code", None)
        text = _decode_reply(getattr(exc, "smtp_error", b"")) if code else _error_text(exc)
        return SmtpResult(code if code and code > 0 else None, text, "data", self.address)

    def close(self) -> None:
        """QUIT every idle session (sessions in use are closed when given back)."""
        self._closed = True
        while True:
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                return
            self._discard(session, quit=True)

    # -- transactions ------------------------------------------------------------------------

    def send(self, mail_from: str, rcpt: str, data: bytes | Outgoing) -> SmtpResult:
        """One mail transaction of a journal copy: its ESMTP parameters follow from its bytes
        (:class:`_CopyParameters`). Never raises for SMTP or network trouble: the result says
        what happened (``code`` None for errors without a reply)."""
        return self._send(mail_from, [(rcpt, ())], data, _CopyParameters())[0]

    def send_envelope(
        self,
        mail_from: str,
        mail_params: Sequence[str],
        rcpts: Sequence[tuple[str, Sequence[str]]],
        data: bytes | Outgoing,
    ) -> list[SmtpResult]:
        """One transaction for several recipients of one next hop, with the original ESMTP
        parameters (``mail_params``: e.g. ``BODY=8BITMIME``, ``SMTPUTF8``, ``RET=HDRS``,
        ``ENVID=x``; per recipient e.g. ``NOTIFY=FAILURE``, ``ORCPT=rfc822;a@b``). Parameters the
        server does not offer are left out (DSN ones without ``DSN``; RFC 3461 section 4), SIZE is
        the real size. One result per recipient, in order; never raises for SMTP or network
        trouble."""
        return self._send(mail_from, rcpts, data, _RelayedParameters(tuple(mail_params)))

    def _send(
        self,
        mail_from: str,
        rcpts: Sequence[tuple[str, Sequence[str]]],
        data: bytes | Outgoing,
        parameters: _Parameters,
    ) -> list[SmtpResult]:
        """The transaction on a borrowed session, one result per recipient, each with the
        transaction's seconds. A reused session that fails its pipelined RSET is replaced and the
        transaction starts again on the new one (its seconds counted from there)."""
        message = data if isinstance(data, Outgoing) else Outgoing.of(data)
        while True:
            try:
                session = self._borrow()
            except SessionError as exc:
                return [SmtpResult(exc.code, exc.text, exc.stage, self.address)] * len(rcpts)
            started = time.monotonic()
            keep = True
            try:
                results = self._transaction(session, mail_from, rcpts, message, parameters)
                last = results[-1] if results else None
                # the server closes (421), or the connection broke: do not reuse the session
                if last is not None and (
                    last.code == 421 or (last.code is None and not last.permanent_local)
                ):
                    keep = False
            except _StaleSession:
                # a reused session failed its pipelined RSET: nothing of this message was
                # accepted; replace it as the RSET in _borrow would have
                self._discard(session)
                continue
            except (OSError, smtplib.SMTPException, ValueError) as exc:
                keep = False
                results = [self._exception_result(exc)] * len(rcpts)
            break
        seconds = self._finish(session, keep, started)
        return [
            SmtpResult(r.code, r.text, r.stage, self.address, seconds, r.permanent_local)
            for r in results
        ]

    def _transaction(
        self,
        session: Session,
        mail_from: str,
        rcpts: Sequence[tuple[str, Sequence[str]]],
        message: Outgoing,
        parameters: _Parameters,
    ) -> list[SmtpResult]:
        """MAIL FROM with its parameters, a RCPT TO with its own per recipient, DATA: pipelined
        when the server offers PIPELINING, else command by command. What the server could not
        take as it is (an envelope address that would inject a command, a message over its SIZE,
        an extension it does not offer) is refused locally and permanently before MAIL."""
        smtp, addr, feats = session.smtp, self.address, session.features
        addresses = [mail_from, *(r for r, _ in rcpts)]
        try:
            if any(c in a for a in addresses for c in "\r\n<>"):
                raise _Refusal(553, "5.1.3 invalid characters in an envelope address")
            message = message.wire_form()
            size = message.size
            params: list[str] = []
            if "size" in feats:
                limit = feats["size"].strip()
                if limit.isdigit() and int(limit) and size > int(limit):
                    raise _Refusal(
                        552,
                        f"5.3.4 message of {size} bytes exceeds {parameters.size_limit} of {limit}",
                    )
                params.append(f"SIZE={size}")
            extensions, utf8 = parameters.mail(feats, addresses, message)
        except _Refusal as refusal:
            local = SmtpResult(refusal.code, refusal.text, "local", addr, permanent_local=True)
            return [local] * len(rcpts)
        params += extensions
        dsn = "dsn" in feats
        mail_args = f"FROM:<{mail_from}>" + "".join(f" {p}" for p in params)
        rcpt_args = [
            f"TO:<{rcpt}>"
            + "".join(
                f" {p}" for p in rparams if dsn or p.split("=", 1)[0].upper() not in _DSN_RCPT
            )
            for rcpt, rparams in rcpts
        ]
        smtp.command_encoding = "utf-8" if utf8 else "ascii"
        try:
            if "pipelining" in feats:
                return self._pipelined(session, mail_args, rcpt_args, message)
            return self._lockstep(smtp, mail_args, rcpt_args, message)
        finally:
            smtp.command_encoding = "ascii"

    def _lockstep(
        self, smtp: smtplib.SMTP, mail_args: str, rcpt_args: Sequence[str], message: Outgoing
    ) -> list[SmtpResult]:
        """Without PIPELINING: each command waits for its reply. One result per recipient: the
        MAIL refusal, its RCPT refusal, or the reply to DATA or the body. When no recipient is
        accepted DATA is not sent; the transaction left open is cleared by the RSET before the
        session's next use."""
        addr = self.address
        code, msg = smtp.docmd("MAIL", mail_args)
        if code != 250:
            return [SmtpResult(code, _decode_reply(msg), "mail", addr)] * len(rcpt_args)
        failed: list[SmtpResult | None] = []
        for args in rcpt_args:
            code, msg = smtp.docmd("RCPT", args)
            ok = code in (250, 251)
            failed.append(None if ok else SmtpResult(code, _decode_reply(msg), "rcpt", addr))
        if all(f is not None for f in failed):
            return [f for f in failed if f is not None]
        code, msg = smtp.docmd("DATA")
        if code == 354:  # else the reply to DATA itself is the result
            _send_payload(smtp, message)
            code, msg = smtp.getreply()
        final = SmtpResult(code, _decode_reply(msg), "data", addr)
        return [f or final for f in failed]

    def _pipelined(
        self, session: Session, mail_args: str, rcpt_args: Sequence[str], message: Outgoing
    ) -> list[SmtpResult]:
        """RFC 2920: [RSET,] MAIL, every RCPT and DATA in one write, their replies read in
        order, then the body: two round trips per transaction instead of 4 + recipients. One
        result per recipient: the MAIL refusal, its RCPT refusal, or the reply to the body."""
        smtp, addr = session.smtp, self.address
        enc = smtp.command_encoding
        group = f"MAIL {mail_args}\r\n".encode(enc)
        group += b"".join(f"RCPT {a}\r\n".encode(enc) for a in rcpt_args) + b"DATA\r\n"
        if session.unchecked:
            try:
                smtp.send(b"RSET\r\n" + group)
                code, _ = smtp.getreply()
            except (OSError, smtplib.SMTPException):
                code = -1
            if code != 250:
                raise _StaleSession
            session.unchecked = False
        else:
            smtp.send(group)
        mail = smtp.getreply()
        rcpt_replies = [smtp.getreply() for _ in rcpt_args]
        code, msg = smtp.getreply()
        failed: list[SmtpResult | None]
        if mail[0] != 250:
            failed = [SmtpResult(mail[0], _decode_reply(mail[1]), "mail", addr)] * len(rcpt_args)
        else:
            failed = [
                None if c in (250, 251) else SmtpResult(c, _decode_reply(m), "rcpt", addr)
                for c, m in rcpt_replies
            ]
        if code != 354:
            final = SmtpResult(code, _decode_reply(msg), "data", addr)
            return [f or final for f in failed]
        if all(f is not None for f in failed):
            # DATA was accepted though no recipient was (RFC 2920 §3.1): send an empty message
            # and leave the session clean; the envelope failures are the results
            smtp.send(b".\r\n")
            smtp.getreply()
            return [f for f in failed if f is not None]
        _send_payload(smtp, message)
        code, msg = smtp.getreply()
        final = SmtpResult(code, _decode_reply(msg), "data", addr)
        return [f or final for f in failed]


def _send_payload(smtp: smtplib.SMTP, message: Outgoing) -> None:
    """The DATA payload of ``message``: its parts in one ``sendmsg`` on a plain socket, so the
    original (a view of the consumed record) is written where it lies, without the copy that
    joining would make; joined over TLS, whose socket has no ``sendmsg``. The socket's timeout
    bounds the whole payload, as for ``sendall``. Failures surface as ``smtplib.send``'s do: the
    connection closed, SMTPServerDisconnected."""
    sock = smtp.sock
    if sock is None or isinstance(sock, ssl.SSLSocket):
        smtp.send(message.payload())
        return
    views = [memoryview(p) for p in message.payload_parts()]
    timeout = sock.gettimeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            sent = sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if not views:
                return
            views[0] = views[0][sent:]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("timed out sending the message")
    except OSError as exc:
        smtp.close()
        raise smtplib.SMTPServerDisconnected("Server not connected") from exc


# RCPT parameters of RFC 3461, left out when the server does not offer DSN
_DSN_RCPT = frozenset({"NOTIFY", "ORCPT"})


class _Refusal(Exception):
    """The transaction cannot go to this server as it is: a local, permanent result."""

    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


class _Parameters(Protocol):
    """Where a transaction's MAIL parameters (besides SIZE) come from."""

    @property
    def size_limit(self) -> str:
        """How a SIZE refusal names the server's limit."""
        ...

    def mail(
        self, features: dict[str, str], addresses: Sequence[str], message: Outgoing
    ) -> tuple[list[str], bool]:
        """The MAIL parameters for a server with ``features`` and whether the commands need
        UTF-8 (SMTPUTF8); raises :class:`_Refusal` when the server cannot take the message."""
        ...


@dataclass(frozen=True)
class _CopyParameters:
    """A journal copy's parameters follow from its bytes: ``BODY=8BITMIME`` for 8-bit content,
    ``SMTPUTF8`` for non-ASCII addresses or UTF-8 header fields. The copy is never converted
    (an archive must get the bytes ingest accepted) nor handed to a server that did not agree
    to carry it: that would leave its mangling to the next hop. Either is a permanent failure of
    the copy, so its NDR names the missing extension (RFC 6152 §3, RFC 6531 §3.4)."""

    size_limit: str = "the smart host's limit"

    def mail(
        self, features: dict[str, str], addresses: Sequence[str], message: Outgoing
    ) -> tuple[list[str], bool]:
        ascii_addresses = all(a.isascii() for a in addresses)
        utf8_header = has_utf8_header_fields(message.header_section())
        if message.eight_bit and "8bitmime" not in features:
            raise _Refusal(554, "5.6.3 8-bit content and the smart host does not offer 8BITMIME")
        if "smtputf8" not in features:
            if not ascii_addresses:
                raise _Refusal(
                    553, "5.6.7 non-ASCII address and the smart host does not offer SMTPUTF8"
                )
            if utf8_header:
                raise _Refusal(
                    550,
                    "5.6.9 UTF-8 header fields (RFC 6532) and the smart host does not offer"
                    " SMTPUTF8; journal format 'report' carries such a message without SMTPUTF8",
                )
        params = ["BODY=8BITMIME"] if message.eight_bit else []
        if not ascii_addresses or utf8_header:
            params.append("SMTPUTF8")
        return params, not ascii_addresses


@dataclass(frozen=True)
class _RelayedParameters:
    """A relayed original keeps its client's parameters (``mail_params``) where the next hop
    offers their extension: ``BODY`` with 8BITMIME (or ``BODY=7BIT``), ``RET``/``ENVID`` with
    DSN, ``SMTPUTF8`` (asked for, or needed by a non-ASCII address) or a permanent refusal;
    the client's SIZE is replaced by the real one."""

    mail_params: tuple[str, ...]
    size_limit: str = "the limit"

    def mail(
        self, features: dict[str, str], addresses: Sequence[str], message: Outgoing
    ) -> tuple[list[str], bool]:
        params: list[str] = []
        utf8 = not all(a.isascii() for a in addresses)
        for p in self.mail_params:
            keyword = p.split("=", 1)[0].upper()
            if keyword == "SIZE":
                continue
            if keyword == "BODY":
                if "8bitmime" in features or p.upper() == "BODY=7BIT":
                    params.append(p)
            elif keyword == "SMTPUTF8":
                utf8 = True
            elif keyword in ("RET", "ENVID"):
                if "dsn" in features:
                    params.append(p)
            else:
                params.append(p)
        if utf8:
            if "smtputf8" not in features:
                raise _Refusal(553, "5.6.7 SMTPUTF8 required and the next hop does not offer it")
            params.append("SMTPUTF8")
        return params, utf8


def has_utf8_header_fields(data: bytes) -> bool:
    """The header section of CRLF-line ``data`` carries UTF-8 (RFC 6532): such a message may only
    travel with SMTPUTF8 (RFC 6531 §3.4). Other 8-bit header bytes (legacy Latin-1 and the
    like) are no internationalised message; they travel, as they always have, with 8BITMIME."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out waiting for the smart host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by the smart host"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return (
            f"smart host closed the connection ({exc})"
            if str(exc)
            else "smart host closed the connection"
        )
    return f"{type(exc).__name__}: {exc}"


def _quietly_close(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        smtp.close()
