"""SMTP policy decisions of ingest, free of I/O so they can be unit-tested without a server.

Every refusal is a :class:`Reply` with a basic and an enhanced status code (RFC 3463) and a
``reason`` that names it in metrics. Decisions:

- MAIL/RCPT syntax (RFC 5321 4.1.2): ``<path>`` with optional source route, ESMTP parameters
  ``KEYWORD[=value]``; malformed addresses are ``501``; unknown parameters ``555``.
- Parameters we advertise and record: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531),
  RET/ENVID/NOTIFY/ORCPT (DSN, RFC 3461), AUTH= on MAIL (RFC 4954, recorded under ``other``).
- Relay control: a recipient outside the accepted domains is refused with ``554 5.7.1`` unless
  the client is trusted (trusted network, authenticated, or a ``relay`` listener). This is
  stricter than "external sender to external recipient": a client that merely *claims* an
  internal sender must not relay either, or ingest would be an open relay.
- Journal and NDR addresses are refused to untrusted clients with the same reply an unknown
  user gets (``550 5.1.1``), so probing them reveals nothing; compared in
  :func:`mailjournal.addresses.canonical` form, so no other spelling (quoted, ``+ext``, case,
  width, IDNA, trailing dot) gets through.
- Recipient verification (``verify_recipients``): an untrusted client's internal recipient must
  be a directory user (:meth:`Policy.listed`), else the same ``550 5.1.1``; the lookup comes
  first, so during an outage every address gets ``451 4.4.3`` alike.
- Sender-specified routing from untrusted clients (``%``, ``!``, quoted ``@``, source routes):
  ``550 5.1.3`` unless ``allow_untrusted_routing``.
- Sender-login binding: an authenticated login uses only its own addresses (``553 5.7.1``).
- Limits: recipients per message (``452 4.5.3``), declared size (``552 5.3.4``), connections
  globally and per client address (``421 4.7.0``), messages and bytes in flight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailjournal.addresses import canonical, has_routing_local_part, is_valid_mailbox, normalize
from mailjournal.config import Config
from mailjournal.trust import client_trusted, ip_trusted


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str
    reason: str = "ok"  # metrics label of a refusal (no addresses, bounded set)

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def ok(self) -> bool:
        return self.code < 400

    @property
    def reply_class(self) -> str:
        return f"{self.code // 100}xx"


# -- replies used by more than one module -------------------------------------------------------

OK_SENDER = Reply(250, "2.1.0", "Sender ok")
OK_RECIPIENT = Reply(250, "2.1.5", "Recipient ok")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command", "sequence")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command", "sequence")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command", "sequence")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later", "connections")
TOO_MANY_FROM_CLIENT = Reply(
    421, "4.7.0", "Too many connections from your address, try again later", "client_connections"
)
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later", "shutdown")
BUSY_MESSAGES = Reply(
    451, "4.3.1", "Too many messages in flight, try again later", "inflight_messages"
)
BUSY_BYTES = Reply(451, "4.3.1", "Too many bytes in flight, try again later", "inflight_bytes")
QUEUE_FULL = Reply(451, "4.3.1", "Queue full, try again later", "queue_full")
KAFKA_ERROR = Reply(
    451, "4.3.0", "Temporary failure storing the message, try again later", "kafka_error"
)
KAFKA_TIMEOUT = Reply(
    451, "4.3.0", "Timed out storing the message, try again later", "kafka_timeout"
)
BARE_NEWLINE = Reply(
    550,
    "5.6.0",
    "Message contains bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
    "bare_newline",
)


def size_exceeded(limit: int) -> Reply:
    return Reply(552, "5.3.4", f"Message size exceeds fixed maximum of {limit} bytes", "size")


def line_too_long(limit: int) -> Reply:
    return Reply(
        550,
        "5.6.0",
        f"Message has a line longer than {limit} octets (RFC 5321 4.5.3.1.6)",
        "line_too_long",
    )


def queued(event_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {event_id}")


# -- parsing MAIL FROM / RCPT TO ----------------------------------------------------------------

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# esmtp-value: any char except "=", SP and controls (RFC 5321 4.1.2); UTF-8 allowed (RFC 6531)
_VALUE = re.compile(r"[^\x00-\x20=\x7f\ud800-\udfff]+\Z")  # no undecodable bytes
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
BODY_VALUES = frozenset({"7BIT", "8BITMIME"})


class SyntaxRefusal(ValueError):
    def __init__(self, reply: Reply):
        super().__init__(str(reply))
        self.reply = reply


def _syntax(text: str, enhanced: str = "5.5.4", code: int = 501) -> SyntaxRefusal:
    return SyntaxRefusal(Reply(code, enhanced, text, "syntax"))


def split_path(arg: str | None, keyword: str) -> tuple[str, list[str]]:
    """Split ``FROM:<path> params`` (or ``TO:``) into the path (without angle brackets and
    source route) and the parameter words. Raises :class:`SyntaxRefusal`."""
    _, path, words = split_routed_path(arg, keyword)
    return path, words


_USAGE = {
    "FROM:": "Syntax: MAIL FROM:<address> [parameters]",
    "TO:": "Syntax: RCPT TO:<address> [parameters]",
}


def split_routed_path(arg: str | None, keyword: str) -> tuple[str, str, list[str]]:
    """:func:`split_path` that also returns the source route (``@a,@b``, "" for none)."""
    usage = _USAGE[keyword]
    if arg is None or arg[: len(keyword)].upper() != keyword:
        raise _syntax(usage, "5.5.2")
    s = arg[len(keyword) :].lstrip(" ")
    if s.startswith("<"):
        i = s.find(">")
        if i < 0 or '"' in s[:i]:  # a quoted local part may hold ">": walk it
            i, quoted = 1, False
            while i < len(s):
                c = s[i]
                if quoted:
                    if c == "\\":
                        i += 1
                    elif c == '"':
                        quoted = False
                elif c == '"':
                    quoted = True
                elif c == ">":
                    break
                i += 1
        if i >= len(s):
            raise _syntax(usage, "5.5.2")
        path, rest = s[1:i], s[i + 1 :]
        if rest and not rest.startswith(" "):
            raise _syntax(usage, "5.5.2")
    else:
        # lenient: no angle brackets (Postfix's strict_rfc821_envelopes = no)
        path, _, rest = s.partition(" ")
        if path == "":
            raise _syntax(usage, "5.5.2")
    route = ""
    if path.startswith("@"):  # source route "@a,@b:user@c" (RFC 5321 4.1.2: MUST accept)
        route, colon, after = path.partition(":")
        if not colon:
            raise _syntax(usage, "5.1.3")
        path = after
    return route, path, rest.split()


def parse_params(words: list[str]) -> dict[str, str]:
    """``KEYWORD[=value]`` words to a dict with upper-cased keywords ("" for no value)."""
    out: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise _syntax(f"Malformed parameter {word[:40]!r}")
        key = key.upper()
        if key in out:
            raise _syntax(f"Duplicate parameter {key}")
        out[key] = value
    return out


def _is_ascii(s: str) -> bool:
    return s.isascii()


def _is_utf8(s: str) -> bool:
    """False when the client sent bytes that are not UTF-8 (decoded as lone surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_address(address: str, *, smtputf8: bool, sender: bool) -> str:
    """The address, domain lower-cased; refuses malformed ones (``501``) and non-ASCII ones
    without SMTPUTF8 (``553 5.6.7``, RFC 6531 3.4)."""
    enhanced = "5.1.7" if sender else "5.1.3"
    what = "sender" if sender else "recipient"
    if not is_valid_mailbox(address) or not _is_utf8(address):
        raise SyntaxRefusal(Reply(501, enhanced, f"Bad {what} address syntax", "bad_address"))
    if not smtputf8 and not _is_ascii(address):
        raise SyntaxRefusal(
            Reply(553, "5.6.7", f"Non-ASCII {what} address needs SMTPUTF8", "bad_address")
        )
    return normalize(address)


@dataclass(slots=True)
class MailParams:
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    other: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        return {
            "size": self.size,
            "body": self.body,
            "smtputf8": self.smtputf8,
            "ret": self.ret,
            "envid": self.envid,
            "other": dict(self.other),
        }


@dataclass(slots=True)
class RcptParams:
    notify: list[str] | None = None
    orcpt: str | None = None
    other: dict[str, str] = field(default_factory=dict)


def parse_mail_params(words: list[str], *, max_size: int) -> MailParams:
    params = parse_params(words)
    out = MailParams()
    for key, value in params.items():
        if key == "SIZE":
            if not value.isdigit() or not value.isascii() or len(value) > 20:
                raise _syntax("SIZE needs a number of bytes")
            out.size = int(value)
            if out.size > max_size:
                raise SyntaxRefusal(
                    Reply(
                        552,
                        "5.3.4",
                        f"Message size exceeds fixed maximum of {max_size} bytes",
                        "size_declared",
                    )
                )
        elif key == "BODY":
            body = value.upper()
            if body not in BODY_VALUES:
                raise _syntax("BODY must be 7BIT or 8BITMIME")
            out.body = body
        elif key == "SMTPUTF8":
            if value:
                raise _syntax("SMTPUTF8 takes no value")
            out.smtputf8 = True
        elif key == "RET":
            ret = value.upper()
            if ret not in ("FULL", "HDRS"):
                raise _syntax("RET must be FULL or HDRS")
            out.ret = ret
        elif key == "ENVID":
            if not value or len(value) > 100 or not _XTEXT.match(value):
                raise _syntax("ENVID must be xtext of at most 100 characters")
            out.envid = value
        elif key == "AUTH":
            # RFC 4954 5: the submitter's identity as claimed by a previous hop; record it
            out.other[key] = value
        else:
            raise SyntaxRefusal(
                Reply(555, "5.5.4", f"MAIL parameter {key} not supported", "bad_param")
            )
    return out


def parse_rcpt_params(words: list[str]) -> RcptParams:
    params = parse_params(words)
    out = RcptParams()
    for key, value in params.items():
        if key == "NOTIFY":
            items = [v.upper() for v in value.split(",")]
            if items == ["NEVER"] or (
                items and all(v in NOTIFY_VALUES for v in items) and len(set(items)) == len(items)
            ):
                out.notify = items
            else:
                raise _syntax("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
        elif key == "ORCPT":
            addr_type, semi, xtext = value.partition(";")
            if not semi or not addr_type or not xtext or len(value) > 500:
                raise _syntax("ORCPT must be addr-type;xtext")
            out.orcpt = value
        else:
            raise SyntaxRefusal(
                Reply(555, "5.5.4", f"RCPT parameter {key} not supported", "bad_param")
            )
    return out


# -- relay control and protected addresses ----------------------------------------------------


def relay_denied(address: str) -> Reply:
    return Reply(554, "5.7.1", f"<{address}>: Relay access denied", "relay_denied")


def unknown_user(address: str) -> Reply:
    return Reply(
        550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown", "unknown_user"
    )


def routing_refused(address: str) -> Reply:
    return Reply(
        550,
        "5.1.3",
        f"<{address}>: Recipient address rejected: sender-specified routing is not allowed",
        "routing",
    )


def sender_not_owned(address: str, login: str) -> Reply:
    return Reply(
        553,
        "5.7.1",
        f"<{address}>: Sender address rejected: not owned by user {login}",
        "sender_login_mismatch",
    )


TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients", "too_many_recipients")
RECIPIENT_LOOKUP_FAILED = Reply(
    451, "4.4.3", "Recipient address lookup failed, try again later", "directory_unavailable"
)
SENDER_LOOKUP_FAILED = Reply(
    451, "4.4.3", "Sender address lookup failed, try again later", "directory_unavailable"
)


class Policy:
    """Envelope decisions for one configuration."""

    def __init__(self, config: Config):
        self.org = config.organization
        self.max_size = config.ingest.max_message_size
        self.max_recipients = config.ingest.max_recipients
        self.delimiter = self.org.recipient_delimiter
        self.protected = frozenset(config.protected_keys())
        self.verify_recipients = config.ingest.verify_recipients
        self.allow_routing = config.ingest.allow_untrusted_routing
        self.sender_login_binding = config.ingest.sender_login_binding
        self.postmaster = f"postmaster@{self.org.accepted_domains[0]}"
        self._networks = tuple(self.org.trusted_networks)

    def ip_trusted(self, ip: str) -> bool:
        """Is ``ip`` in a trusted network (exempts it from the client rate limit)."""
        return ip_trusted(ip, self._networks)

    def trusted(self, ip: str, *, authenticated: bool, listener_role: str) -> bool:
        """Trusted clients may relay and reach the journal/NDR addresses."""
        return client_trusted(
            ip, authenticated=authenticated, listener_role=listener_role, networks=self._networks
        )

    def mail(self, arg: str | None, *, esmtp: bool = True) -> tuple[str, MailParams]:
        """Parse ``MAIL FROM:``; returns (sender, params), sender "" for ``<>``.

        Raises :class:`SyntaxRefusal` with the reply to send."""
        path, words = split_path(arg, "FROM:")
        if words and not esmtp:
            raise _syntax("Parameters need EHLO")
        params = parse_mail_params(words, max_size=self.max_size)
        if path == "":
            return "", params  # null reverse-path: bounces are mail too
        return check_address(path, smtputf8=params.smtputf8, sender=True), params

    def rcpt(
        self,
        arg: str | None,
        *,
        smtputf8: bool,
        accepted: int,
        trusted: bool,
        esmtp: bool = True,
    ) -> tuple[str, RcptParams]:
        """Parse and judge ``RCPT TO:``; returns (recipient, params) when it is accepted.

        Raises :class:`SyntaxRefusal` with the refusal."""
        route, path, words = split_routed_path(arg, "TO:")
        if words and not esmtp:
            raise _syntax("Parameters need EHLO")
        if path.lower() == "postmaster":  # RFC 5321 4.5.1: MUST accept without a domain
            path = self.postmaster
        if path == "":
            raise SyntaxRefusal(Reply(501, "5.1.3", "Bad recipient address syntax", "bad_address"))
        address = check_address(path, smtputf8=smtputf8, sender=False)
        params = parse_rcpt_params(words)
        if not trusted and not self.allow_routing and (route or has_routing_local_part(address)):
            raise SyntaxRefusal(routing_refused(address))
        refusal = self.judge_recipient(address, accepted=accepted, trusted=trusted)
        if refusal is not None:
            raise SyntaxRefusal(refusal)
        return address, params

    def judge_recipient(self, address: str, *, accepted: int, trusted: bool) -> Reply | None:
        if accepted >= self.max_recipients:
            return TOO_MANY_RECIPIENTS
        if not trusted:
            if not self.org.is_internal_address(address):
                return relay_denied(address)
            if not self.verify_recipients and self.is_protected(address):
                return unknown_user(address)
        return None

    def is_protected(self, address: str) -> bool:
        """A journal or NDR address, in any spelling."""
        return canonical(address, self.delimiter) in self.protected

    def needs_lookup(self, address: str, *, trusted: bool) -> bool:
        """Must an accepted recipient (internal, when untrusted) be looked up in the directory?
        Not postmaster: RFC 5321 4.5.1 makes it reachable whatever the directory lists."""
        if not self.verify_recipients or trusted:
            return False
        return canonical(address, self.delimiter).partition("@")[0] != "postmaster"

    def listed(self, address: str, is_user: bool | None) -> Reply | None:
        """The reply after the directory lookup (None: the directory could not answer). Hidden
        addresses and unknown users get one reply, whatever the directory says of the former."""
        if is_user is None:
            return RECIPIENT_LOOKUP_FAILED
        if not is_user or self.is_protected(address):
            return unknown_user(address)
        return None

    def binds_sender(self, sender: str, *, authenticated: bool) -> bool:
        """Must this MAIL FROM be checked against the login's addresses? (Not the null sender:
        an authenticated server may send bounces.)"""
        return self.sender_login_binding and authenticated and sender != ""

    def sender_owned(self, sender: str, login: str, allowed: list[str] | None) -> Reply | None:
        """The reply for ``sender`` given the addresses the directory gives ``login`` (None: no
        such user). ``@domain`` in the list allows every address of that domain."""
        want = canonical(sender, self.delimiter)
        domain = want.rpartition("@")[2]
        for address in allowed or ():
            if address.startswith("@"):
                if canonical("x" + address, "").rpartition("@")[2] == domain:
                    return None
            elif canonical(address, self.delimiter) == want:
                return None
        return sender_not_owned(sender, login)


# -- limits ------------------------------------------------------------------------------------


class ConnectionLimiter:
    """Open connections, globally and per client address."""

    def __init__(self, max_total: int, max_per_client: int):
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: dict[str, int] = {}

    def open(self) -> Reply | None:
        if self.total >= self.max_total:
            return TOO_MANY_CONNECTIONS
        self.total += 1
        return None

    def bind(self, ip: str) -> Reply | None:
        """Count the connection against its client address (after PROXY, the real client)."""
        n = self.per_client.get(ip, 0)
        if n >= self.max_per_client:
            return TOO_MANY_FROM_CLIENT
        self.per_client[ip] = n + 1
        return None

    def unbind(self, ip: str) -> None:
        n = self.per_client.get(ip, 0) - 1
        if n > 0:
            self.per_client[ip] = n
        else:
            self.per_client.pop(ip, None)

    def close(self) -> None:
        self.total -= 1


class InflightBudget:
    """Messages and bytes between the start of DATA and the reply: bounds ingest's memory."""

    def __init__(self, max_messages: int, max_bytes: int):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0

    def start_message(self) -> Reply | None:
        if self.messages >= self.max_messages:
            return BUSY_MESSAGES
        if self.bytes >= self.max_bytes:
            return BUSY_BYTES
        self.messages += 1
        return None

    def reserve(self, n: int) -> bool:
        if self.bytes + n > self.max_bytes:
            return False
        self.bytes += n
        return True

    def release(self, nbytes: int) -> None:
        self.bytes -= nbytes

    def end_message(self) -> None:
        self.messages -= 1
