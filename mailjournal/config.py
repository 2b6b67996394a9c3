"""The configuration model: one TOML file plus ``MAILJOURNAL_...`` environment overrides.

Every section refuses unknown keys, so a typo is an error at start, never a silently ignored
setting. Journaling in a direction without its NDR address is refused (the seed makes the NDR
address mandatory whenever journaling in that direction is on).

Environment overrides use ``__`` between path segments, e.g.
``MAILJOURNAL_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``MAILJOURNAL_JOURNAL__INBOUND__ADDRESS=journal-in@corp.example``.
Values are parsed as TOML values when they parse (numbers, booleans, arrays), else taken as strings.
An error about a value set that way names the variable too.

Files a stage reads at start (TLS certificates, secrets) are checked by that stage's command
(:func:`file_problems`), not by the model: one config file serves every stage, and a delivery
pod need not mount the ingest listener's certificate.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mailjournal.addresses import (
    AddressError,
    canonical,
    domain_key,
    domain_of,
    validate_mailbox,
)
from mailjournal.stamp import DEFAULT_MAX_AGE_SECONDS, StampKeyError, read_key
from mailjournal.trust import ip_trusted

ENV_PREFIX = "MAILJOURNAL_"


def _mailbox(value: str) -> str:
    try:
        return validate_mailbox(value)
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    try:
        validate_mailbox(f"postmaster@{value}")
    except AddressError:
        raise ValueError(f"not a valid domain: {value!r}") from None
    return value


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"not a valid IP network: {value!r}") from None


def _hostname(value: str) -> str:
    # announced in SMTP greetings and EHLO: a blank or a CR/LF would break (or inject) a line
    if not value or len(value) > 255 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"not a valid host name: {value!r}")
    return value


Mailbox = Annotated[str, AfterValidator(_mailbox)]
Domain = Annotated[str, AfterValidator(_domain)]
Network = Annotated[str, AfterValidator(_network)]
Hostname = Annotated[str, AfterValidator(_hostname)]
Delay = Annotated[float, Field(gt=0)]  # a zero delay would retry a failing host in a tight loop


class Strict(BaseModel):
    # no NaN or infinity: an infinite timeout or delay is never what a setting means
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


class ReportFormat(StrEnum):
    REPORT = "report"  # Exchange-style envelope journal report, original attached byte for byte
    COPY = "copy"  # the original message, unaltered


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class OrganizationConfig(Strict):
    name: str = "mailjournal"
    accepted_domains: list[Domain] = Field(min_length=1)
    trusted_networks: list[Network] = ["127.0.0.0/8", "::1/128"]
    include_subdomains: bool = False
    """Also treat sub.accepted.example as internal."""
    recipient_delimiter: str = Field(default="+", max_length=8)
    """Subaddress delimiters, each character one (Postfix's recipient_delimiter): user+ext is
    compared as user (journal/NDR address protection, recipient verification, sender-login
    binding). Empty: off."""

    def is_internal_domain(self, domain: str) -> bool:
        # U-labels and A-labels are one domain: anna@köln.example is anna@xn--kln-sna.example
        domain = domain_key(domain)
        for accepted in map(domain_key, self.accepted_domains):
            if domain == accepted or (self.include_subdomains and domain.endswith("." + accepted)):
                return True
        return False

    def is_internal_address(self, address: str) -> bool:
        return bool(address) and self.is_internal_domain(domain_of(address))

    def is_trusted_ip(self, ip: str) -> bool:
        return ip_trusted(ip, self.trusted_networks)


class DirectionJournalConfig(Strict):
    """Journaling of one direction: the seed's ``<Dir>Journal``, ``<Dir>JournalNDR`` and
    ``<Dir>RecipJournalProp`` values."""

    enabled: bool = True
    address: Mailbox | None = None
    """Global journal address for the direction."""
    additional_addresses: list[Mailbox] = []
    """More global journal addresses (fan-out, e.g. two archives during a migration): each gets
    its own copy, its failures NDR'd to ndr_address like the first one's."""
    ndr_address: Mailbox | None = None
    """Mandatory when journaling in the direction is on."""
    recipient_attribute: str | None = None
    """Per-recipient journal address: directory attribute."""
    format: ReportFormat | None = None
    """Defaults to [journal].format."""

    @property
    def addresses(self) -> list[str]:
        """The global journal addresses, first ``address``, duplicates once."""
        out: list[str] = []
        for a in [self.address, *self.additional_addresses]:
            if a is not None and a.casefold() not in {o.casefold() for o in out}:
                out.append(a)
        return out

    @property
    def active(self) -> bool:
        return self.enabled and (bool(self.addresses) or self.recipient_attribute is not None)


class JournalConfig(Strict):
    format: ReportFormat = ReportFormat.REPORT
    sender: Mailbox = "mailjournal@localhost.localdomain"
    """From: of journal reports."""
    # HMAC key of the loop-guard stamp on our journal reports and NDRs (mailjournal.stamp): a
    # file of at least 32 random bytes, required wherever stamps are made or honoured when
    # journaling is on (`mailjournal run` creates it when missing)
    stamp_secret_file: Path | None = None
    """Loop-guard stamp key: a file of at least 32 random bytes (required with journaling on)."""
    stamp_previous_secret_file: Path | None = None
    """During a key rotation: verifies stamps, never makes them."""
    stamp_max_age_seconds: int = Field(default=DEFAULT_MAX_AGE_SECONDS, ge=60)
    """A stamp older than this when the message arrives is not honoured."""
    archive_addresses: list[Mailbox] = []
    """Mailboxes a journal distribution list expands to: protected like journal addresses."""
    inbound: DirectionJournalConfig = DirectionJournalConfig(enabled=False)
    outbound: DirectionJournalConfig = DirectionJournalConfig(enabled=False)
    internal: DirectionJournalConfig = DirectionJournalConfig(enabled=False)
    """Off by default."""
    # decisions per transaction on the messages -> journal hop (exactly-once batching)
    batch_max_messages: int = Field(default=500, ge=1)
    batch_max_ms: int = Field(default=100, ge=1)
    prefetch_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    """Bound of the consumer's prefetch queue, in bytes of messages: a batch is what the queue
    holds, so it holds at most about twice this (one fetch of up to this size may land on a full
    queue), whatever ``batch_max_messages`` allows. A message larger than the bound is still
    fetched, alone."""

    @model_validator(mode="after")
    def _ndr_mandatory(self) -> JournalConfig:
        for name in ("inbound", "outbound", "internal"):
            direction: DirectionJournalConfig = getattr(self, name)
            if direction.active and direction.ndr_address is None:
                raise ValueError(
                    f"journal.{name}.ndr_address is required when journal.{name} journaling is on "
                    f"(address or recipient_attribute is set)"
                )
        return self

    @property
    def active(self) -> bool:
        """Some direction is journaled: stamps are made and honoured."""
        return any(self.direction(d).active for d in ("inbound", "outbound", "internal"))

    def stamp_key(self) -> bytes | None:
        """The current stamp key; None when none is configured (the stages that need one refuse
        to start then, see :func:`file_problems`). Raises :class:`StampKeyError` naming the key
        when the file holds no usable key."""
        if self.stamp_secret_file is None:
            return None
        try:
            return read_key(self.stamp_secret_file)
        except StampKeyError as exc:
            raise StampKeyError(f"journal.stamp_secret_file: {exc}") from None

    def stamp_keys(self) -> tuple[bytes, ...]:
        """The keys that verify a stamp: the current one, then the previous one."""
        current = self.stamp_key()
        if current is None:
            raise StampKeyError(
                "journal.stamp_secret_file: required when journaling is on (the loop-guard "
                "stamp key: a file of at least 32 random bytes)"
            )
        keys = [current]
        if self.stamp_previous_secret_file is not None:
            try:
                keys.append(read_key(self.stamp_previous_secret_file))
            except StampKeyError as exc:
                raise StampKeyError(f"journal.stamp_previous_secret_file: {exc}") from None
        return tuple(keys)

    def direction(self, direction: Direction | str) -> DirectionJournalConfig:
        cfg: DirectionJournalConfig = getattr(self, str(direction))
        return cfg

    def format_for(self, direction: Direction | str) -> ReportFormat:
        return self.direction(direction).format or self.format

    def protected_addresses(self) -> set[str]:
        """Journal and NDR addresses: never journaled, never reachable from outside."""
        out: set[str] = set()
        for name in ("inbound", "outbound", "internal"):
            d = self.direction(name)
            out.update(a.casefold() for a in (*d.addresses, d.ndr_address) if a)
        out.update(a.casefold() for a in self.archive_addresses)
        return out


class FileDirectoryConfig(Strict):
    # TOML/JSON/CSV mapping address -> {attribute: value}; reloaded when its mtime changes
    path: Path


class LdapDirectoryConfig(Strict):
    url: str = "ldap://127.0.0.1:389"
    start_tls: bool = False
    ca_file: Path | None = None
    bind_dn: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    base_dn: str
    # {address} is replaced by the escaped address; matches primary mail and proxy aliases
    filter: str = "(|(mail={address})(proxyAddresses=smtp:{address}))"
    login_filter: str = "(|(uid={login})(mail={login}))"
    """Sender-login binding: the entry of an authenticated login ({login} replaced, escaped)."""
    sender_attributes: list[str] = ["mail", "proxyAddresses"]
    """Sender-login binding: the addresses that entry may use as MAIL FROM (smtp: values of
    proxyAddresses style attributes unwrapped)."""
    timeout_seconds: float = Field(default=5.0, gt=0)
    pool_size: int = Field(default=4, ge=1)

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("ldap", "ldaps", "ldapi") or not rest.strip("/"):
            raise ValueError(f"not an LDAP URL (ldap://, ldaps:// or ldapi://): {value!r}")
        return value

    def password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        if self.password_env:
            return os.environ.get(self.password_env)
        return None


class DirectoryConfig(Strict):
    backend: Literal["none", "file", "ldap"] = "none"
    file: FileDirectoryConfig | None = None
    ldap: LdapDirectoryConfig | None = None
    cache_ttl_seconds: float = Field(default=300, ge=0)
    negative_ttl_seconds: float = Field(default=60, ge=0)
    cache_size: int = Field(default=100_000, ge=0)
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _backend_section(self) -> DirectoryConfig:
        if self.backend == "file" and self.file is None:
            raise ValueError("directory.file is required when directory.backend = 'file'")
        if self.backend == "ldap" and self.ldap is None:
            raise ValueError("directory.ldap is required when directory.backend = 'ldap'")
        return self


class TopicConfig(Strict):
    name: str
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int = Field(default=1, ge=1)
    retention_ms: int = 7 * 24 * 3600 * 1000
    """-1 = forever."""
    compact: bool = False
    """Cleanup.policy=compact (keyed audit trails)."""
    compression: Literal["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"] = (
        "uncompressed"
    )
    """The topic's ``compression.type``: how the broker stores its records. Uncompressed by
    default because a consumer's memory bounds (librdkafka's fetch and prefetch sizes, the byte
    budget of delivery and the relay) are checked against stored bytes *before* decompression: a
    fetch of compressed records that a sender made compressible (1 MB of one repeated line) would
    inflate to hundreds of MB. Setting a codec saves retention (a third on real mail with zstd)
    and makes those bounds count compressed bytes."""

    @field_validator("name")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        # Kafka's rule for topic names; the retry tiers add ".<i>"
        legal = all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
        if not value or not legal or len(value) > 240 or value in (".", ".."):
            raise ValueError(
                f"not a valid Kafka topic name (letters, digits, '.', '_', '-'): {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _retention_and_isr(self) -> TopicConfig:
        if self.retention_ms == 0 or self.retention_ms < -1:
            raise ValueError(
                f"retention_ms of topic {self.name!r} must be -1 (forever) or positive, "
                f"not {self.retention_ms}"
            )
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) exceeds replication_factor "
                f"({self.replication_factor}) for topic {self.name!r}"
            )
        return self


def _default_topics() -> dict[str, TopicConfig]:
    day = 24 * 3600 * 1000
    return {
        "messages": TopicConfig(name="mailjournal.messages", retention_ms=7 * day),
        "journal": TopicConfig(name="mailjournal.journal", retention_ms=7 * day),
        "retry": TopicConfig(name="mailjournal.journal.retry", retention_ms=7 * day),
        "outcomes": TopicConfig(name="mailjournal.outcomes", retention_ms=30 * day, compact=True),
        "dead_letters": TopicConfig(name="mailjournal.dead-letters", retention_ms=-1),
        "relay_retry": TopicConfig(name="mailjournal.relay.retry", retention_ms=7 * day),
        "receipts": TopicConfig(name="mailjournal.receipts", retention_ms=-1),
        "evidence": TopicConfig(name="mailjournal.evidence", partitions=1, retention_ms=-1),
        "receipts_state": TopicConfig(
            name="mailjournal.receipts.state", retention_ms=-1, compact=True
        ),
    }


class TopicsConfig(Strict):
    messages: TopicConfig = _default_topics()["messages"]
    journal: TopicConfig = _default_topics()["journal"]
    retry: TopicConfig = _default_topics()["retry"]
    """Base of the retry tiers: delivery uses one topic per delay, named ``<name>.<i>``."""
    outcomes: TopicConfig = _default_topics()["outcomes"]
    dead_letters: TopicConfig = _default_topics()["dead_letters"]
    relay_retry: TopicConfig = _default_topics()["relay_retry"]
    """Base of the relay's retry tiers (``<name>.<i>``, one per ``relay.retry_delays_seconds``);
    created only when a listener relays."""
    receipts: TopicConfig = _default_topics()["receipts"]
    """Signed journal receipts, one chain per partition (docs/evidence.md): kept forever."""
    evidence: TopicConfig = _default_topics()["evidence"]
    """Signed checkpoints of the receipt chains and policy changes: kept forever."""
    receipts_state: TopicConfig = _default_topics()["receipts_state"]
    """The receipt writer's changelog (messages awaiting their receipt), compacted."""

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        # a table that sets only some keys keeps the topic's other defaults (e.g. compaction)
        if not isinstance(data, dict):
            return data
        defaults = _default_topics()
        merged = dict(data)
        for key, value in data.items():
            if key in defaults and isinstance(value, dict):
                merged[key] = {**defaults[key].model_dump(), **value}
        return merged

    def all(self) -> dict[str, TopicConfig]:
        return {
            "messages": self.messages,
            "journal": self.journal,
            "retry": self.retry,
            "outcomes": self.outcomes,
            "dead_letters": self.dead_letters,
            "receipts": self.receipts,
            "evidence": self.evidence,
            "receipts_state": self.receipts_state,
        }


LibrdkafkaProps = dict[str, str | int | float | bool]


class KafkaConfig(Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id_prefix: str = "mailjournal"
    # pass-through librdkafka properties: common, then per role (role wins)
    properties: LibrdkafkaProps = {}
    producer: LibrdkafkaProps = {}
    consumer: LibrdkafkaProps = {}
    admin: LibrdkafkaProps = {}
    topics: TopicsConfig = TopicsConfig()
    # consumer groups of the stages
    journal_group: str = "mailjournal-journal"
    delivery_group: str = "mailjournal-delivery"
    relay_group: str = "mailjournal-relay"
    """Consumer group of the relay on the messages topic (fan-out: it never waits for journaling)."""
    evidence_group: str = "mailjournal-evidence"
    """Consumer group (and transactional id) of the receipt writer."""

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for entry in value.split(","):
            entry = entry.strip()
            port = entry.rpartition(":")[2]
            if (
                not entry
                or any(c.isspace() for c in entry)
                or (port.isdigit() and not 1 <= int(port) <= 65535)
            ):
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @model_validator(mode="after")
    def _own_groups(self) -> KafkaConfig:
        # two stages in one group would split a topic between them: each would see only a part
        seen: dict[str, str] = {}
        for key in ("journal_group", "delivery_group", "relay_group", "evidence_group"):
            group = getattr(self, key)
            if group in seen:
                raise ValueError(
                    f"kafka.{key} {group!r} is also kafka.{seen[group]}: each stage needs its "
                    f"own consumer group"
                )
            seen[group] = key
        return self


class ListenerConfig(Strict):
    name: str
    host: Hostname = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    role: Literal["internet", "relay"] = "internet"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_starttls: bool = False
    auth: bool = False
    """AUTH PLAIN/LOGIN, offered only after STARTTLS."""
    credentials_file: Path | None = None
    proxy_protocol: bool = False
    """Expect a PROXY v1/v2 header (behind a TCP load balancer)."""
    proxy_protocol_peers: list[Network] = []
    """With proxy_protocol: the networks of the load balancer, the only peers whose PROXY header
    is believed; a connection from any other address is closed before anything is read or sent
    (logged, counted). Required with proxy_protocol = true."""
    relay: bool = False
    """Inline mode: ingest's 250 takes responsibility for the original, and the relay forwards
    every message accepted here to its next hop (see [relay]). Off for pure journaling feeds."""

    @model_validator(mode="after")
    def _tls(self) -> ListenerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"listener {self.name!r}: tls_cert_file and tls_key_file go together")
        if self.require_starttls and self.tls_cert_file is None:
            raise ValueError(f"listener {self.name!r}: require_starttls needs tls_cert_file")
        if self.auth and self.tls_cert_file is None:
            raise ValueError(
                f"listener {self.name!r}: auth needs TLS (tls_cert_file); AUTH is only offered "
                f"after STARTTLS"
            )
        if self.auth and self.credentials_file is None:
            raise ValueError(f"listener {self.name!r}: auth needs credentials_file")
        if self.proxy_protocol and not self.proxy_protocol_peers:
            raise ValueError(
                f"listener {self.name!r}: proxy_protocol = true needs proxy_protocol_peers (the "
                f"load balancer's networks); from anyone else a PROXY header would be a forged "
                f"client address"
            )
        if self.proxy_protocol_peers and not self.proxy_protocol:
            raise ValueError(
                f"listener {self.name!r}: proxy_protocol_peers is set but proxy_protocol is false"
            )
        return self


class IngestConfig(Strict):
    hostname: Hostname = "localhost"
    """Announced in the banner and EHLO."""
    listeners: list[ListenerConfig] = []
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=500, ge=1)
    max_line_length: int = Field(default=998 + 2, ge=80)
    """RFC 5322 text line + CRLF."""
    command_timeout_seconds: float = Field(default=300, gt=0)
    data_timeout_seconds: float = Field(default=600, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_client: int = Field(default=50, ge=1)
    kafka_ack_timeout_seconds: float = Field(default=30, gt=0)
    max_inflight_messages: int = Field(default=2000, ge=1)
    max_inflight_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    # "reject": bare CR/LF in DATA is refused with 550 5.6.0 (never ends DATA, never splits)
    bare_newline: Literal["reject", "normalize"] = "reject"
    verify_recipients: bool = False
    """Check each internal recipient of an untrusted client against the directory at RCPT
    (Postfix's relay_recipient_maps): unknown users get 550 5.1.1 like the hidden journal/NDR
    addresses, a directory outage 451 4.4.3. Needs [directory]. Inline mode: no backscatter."""
    allow_untrusted_routing: bool = False
    """Accept sender-specified routing from untrusted clients: % or ! or a quoted @ in the
    local part, source routes (Postfix's allow_untrusted_routing; the percent hack and bang
    paths of the next hop would relay them). Off: 550 5.1.3."""
    sender_login_binding: bool = True
    """An authenticated user may use only the MAIL FROM addresses the directory gives them
    (Postfix's smtpd_sender_login_maps + reject_sender_login_mismatch): 553 5.7.1 otherwise.
    The null sender <> is allowed (bounces). Needs [directory] when a listener has auth."""
    # -- session limits like Postfix smtpd's (docs/reliability.md "The edge") --
    junk_command_limit: int = Field(default=100, ge=1)
    """NOOP, RSET, VRFY, ETRN and HELP a session may send before 421 4.7.0 and close (Postfix
    smtpd_junk_command_limit); a delivered message resets the count."""
    soft_error_limit: int = Field(default=10, ge=0)
    """Errors (5xx replies; a 4xx is ingest's own state: Kafka, load) after which each further
    error reply waits error_sleep_seconds (Postfix smtpd_soft_error_limit); a delivered message
    resets the count."""
    hard_error_limit: int = Field(default=20, ge=1)
    """Errors after which the session is answered 421 4.7.0 and closed (Postfix
    smtpd_hard_error_limit)."""
    error_sleep_seconds: float = Field(default=1.0, ge=0, le=60)
    """Delay before each error reply past soft_error_limit (Postfix smtpd_error_sleep_time)."""
    session_lifetime_seconds: float = Field(default=1800, gt=0)
    """Longest SMTP session, however busy: 421 4.4.2 and close after it (a message in DATA is
    finished first). Postfix has no total limit, only per-command timeouts."""
    min_data_rate: int = Field(default=500, ge=0)
    """Bytes per second a DATA phase must average, measured from its start once it has run
    for data_rate_grace_seconds; below it 421 4.4.2 and close (Postfix smtpd_min_data_rate,
    500). 0 turns the check off."""
    data_rate_grace_seconds: float = Field(default=30, gt=0)
    """How long a DATA phase may run before min_data_rate applies (its first bytes may be slow)."""
    client_connection_rate_limit: int = Field(default=0, ge=0)
    """New connections one client address may make per minute, per ingest worker; past it
    421 4.7.0 at connect (Postfix anvil's smtpd_client_connection_rate_limit, 0 = off, as there)."""
    auth_failure_limit: int = Field(default=5, ge=1)
    """Failed AUTH attempts one client address may make within auth_failure_window_seconds, across
    connections; after it AUTH is answered 454 4.7.0 until the window passes."""
    auth_failure_window_seconds: float = Field(default=300, gt=0)
    """The window auth_failure_limit counts in, opened by the address's first counted failure."""
    auth_threads: int = Field(default=2, ge=1, le=32)
    """Threads that check passwords (scrypt), apart from the pool that hashes messages: a flood of
    AUTH attempts cannot delay accepted mail."""

    @model_validator(mode="after")
    def _distinct_listeners(self) -> IngestConfig:
        names: set[str] = set()
        bound: dict[tuple[str, int], str] = {}
        for i, lst in enumerate(self.listeners):
            if lst.name in names:
                raise ValueError(
                    f"ingest.listeners.{i}.name: another listener is named {lst.name!r}"
                )
            names.add(lst.name)
            where = (lst.host, lst.port)
            if lst.port and where in bound:
                raise ValueError(
                    f"ingest.listeners.{i}: {lst.name!r} and {bound[where]!r} both listen on "
                    f"{lst.host}:{lst.port}"
                )
            bound[where] = lst.name
        if self.soft_error_limit > self.hard_error_limit:
            raise ValueError(
                f"ingest.soft_error_limit ({self.soft_error_limit}) is above "
                f"ingest.hard_error_limit ({self.hard_error_limit})"
            )
        return self


_FINGERPRINT = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


class SmartHostConfig(Strict):
    host: Hostname = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    starttls: Literal["off", "opportunistic", "required"] = "off"
    tls_verify: bool = True
    """Certificate chain and host name verified (against ca_file or the system store)."""
    ca_file: Path | None = None
    """Trust only this CA bundle (pinning a CA)."""
    tls_fingerprints: list[str] = []
    """Pinning a certificate: SHA-256 of the server's certificate (DER), hex, colons allowed;
    the session fails unless it matches one."""
    client_cert_file: Path | None = None
    """Client certificate (PEM, may hold the key too) presented in the TLS handshake."""
    client_key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    credentials_file: Path | None = None
    """AUTH credentials as one ``username:password`` line (instead of username/password_file)."""
    helo_name: Hostname | None = None

    @field_validator("tls_fingerprints")
    @classmethod
    def _fingerprints(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            fp = value.strip().lower().replace(":", "")
            if not _FINGERPRINT.match(fp):
                raise ValueError(
                    f"{value!r} is no SHA-256 fingerprint (64 hex digits, colons allowed)"
                )
            out.append(fp.removeprefix("sha256:"))
        return out

    @model_validator(mode="after")
    def _tls_files(self) -> SmartHostConfig:
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file needs client_cert_file")
        if self.credentials_file is not None and (self.username or self.password_file):
            raise ValueError("credentials_file replaces username and password_file: set one way")
        if self.starttls == "off" and (self.tls_fingerprints or self.client_cert_file):
            raise ValueError("tls_fingerprints and client_cert_file need starttls on")
        return self

    @property
    def authenticates(self) -> bool:
        return bool(self.username or self.credentials_file)


class RouteConfig(SmartHostConfig):
    """A ``[[delivery.routes]]`` entry: where copies to matching journal (and NDR) addresses go,
    with their own TLS, AUTH and concurrency. A route whose destinations are not accepted
    domains of the organisation gets ``starttls = "required"`` with verification by default."""

    starttls: Literal["off", "opportunistic", "required"] = "required"
    """Default ``required`` (``off`` when every destination is an accepted domain)."""
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    """Label of the route in logs and metrics."""
    match: list[str] = Field(min_length=1)
    """Addresses (``journal@archive.example``), domains (``archive.example``) or subdomains
    (``*.archive.example``)."""
    mx: bool = False
    """Look up the address's domain's MX records instead of ``host``."""
    concurrency: int = Field(default=4, ge=1)
    """Parallel transactions (and so open sessions) to this route."""
    max_waiting: int = Field(default=16, ge=0)
    """Copies waiting for a session of this route; more are deferred to the retry tier (no
    attempt counted) so a slow route never holds the others' threads."""

    @field_validator("match")
    @classmethod
    def _patterns(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            v = value.strip().lower()
            if "@" in v:
                out.append(_mailbox(v).lower())
            elif v.startswith("*."):
                out.append("*." + _domain(v[2:]))
            else:
                out.append(_domain(v))
        return out

    def domains(self) -> list[str]:
        return [p.rpartition("@")[2].removeprefix("*.") for p in self.match]


class DeliveryConfig(Strict):
    smart_host: SmartHostConfig = SmartHostConfig()
    """The default route: copies to addresses no route matches."""
    routes: list[RouteConfig] = []
    """Per destination routes (``[[delivery.routes]]``): exact address, then the longest
    domain match, else the smart host."""
    concurrency: int = Field(default=16, ge=1)
    """Parallel SMTP sessions."""
    max_inflight: int = Field(default=256, ge=1)
    """Records taken from Kafka and not yet recorded as final by a commit (in flight, or final
    since the last commit): what a crash would send again. Records finished behind a stuck one
    are recorded in the commit's progress note and do not count."""
    max_inflight_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """Bytes of the records taken and not yet finished (their copies are held in memory while
    they are sent): with 1 MB copies this, not ``max_inflight``, bounds the worker's memory. One
    record larger than it is still taken when nothing else is in flight."""
    connect_timeout_seconds: float = Field(default=10, gt=0)
    command_timeout_seconds: float = Field(default=60, gt=0)
    # one retry topic per delay ("<topics.retry.name>.<i>"): a topic holds records of one delay,
    # so its head is always the next due; attempt n waits delays[min(n, len-1)] (+/- jitter)
    retry_delays_seconds: list[Delay] = Field(default=[60, 300, 900, 1800, 3600], min_length=1)
    retry_jitter: float = Field(default=0.1, ge=0, le=0.5)
    expiry_seconds: float = Field(default=48 * 3600, gt=0)
    ndr_attach_max_bytes: int = Field(default=1024 * 1024, ge=0)
    """Above: headers only."""
    reporting_mta: Hostname = "localhost"

    def route_for(self, address: str) -> RouteConfig | None:
        """The route copies to ``address`` take: a route naming the address, else the one with
        the longest matching domain (``domain`` itself, ``*.domain`` below it), else None (the
        smart host)."""
        address = address.strip().lower()
        domain = domain_key(address.rpartition("@")[2])
        best: tuple[int, RouteConfig] | None = None
        for route in self.routes:
            for pattern in route.match:
                if "@" in pattern:
                    local, _, pdomain = pattern.rpartition("@")
                    score = (
                        10_000
                        if f"{local}@{domain_key(pdomain)}"
                        == (f"{address.rpartition('@')[0]}@{domain}")
                        else -1
                    )
                elif pattern.startswith("*."):
                    suffix = domain_key(pattern[2:])
                    score = len(suffix) if domain.endswith("." + suffix) else -1
                else:
                    score = len(pattern) + 1 if domain == domain_key(pattern) else -1
                if score >= 0 and (best is None or score > best[0]):
                    best = (score, route)
        return best[1] if best else None


class NextHopConfig(SmartHostConfig):
    """A next hop of the relay: an SMTP server, or ``mx = true`` for a DNS MX lookup of each
    recipient's domain (``host`` is then ignored)."""

    mx: bool = False
    """Look up the recipient domain's MX records (A/AAAA fallback, RFC 5321 5.1)."""


class RelayConfig(Strict):
    """Inline mode: where originals accepted on listeners with ``relay = true`` go next, and
    how their failures are reported to the original sender (RFC 3461/3464)."""

    inbound: NextHopConfig | None = None
    """Next hop for internal recipients (the internal mail servers)."""
    outbound: NextHopConfig | None = None
    """Next hop for external recipients (a smart host, or ``mx = true``)."""
    domains: dict[Domain, NextHopConfig] = {}
    """Per recipient domain next hops; they win over inbound/outbound."""
    concurrency: int = Field(default=16, ge=1)
    """Parallel SMTP sessions of the relay worker."""
    max_inflight: int = Field(default=256, ge=1)
    max_inflight_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """As ``delivery.max_inflight_bytes``, for the originals the relay holds while it sends."""
    retry_delays_seconds: list[Delay] = Field(
        default=[60, 300, 900, 1800, 3600, 7200], min_length=1
    )
    """One retry topic per delay (``<topics.relay_retry.name>.<i>``), as in delivery."""
    expiry_seconds: float = Field(default=5 * 24 * 3600, gt=0)
    """Give up (failure DSN to the sender) after this long; Postfix's maximal_queue_lifetime."""
    reporting_mta: Hostname | None = None
    """Reporting-MTA of DSNs to senders; defaults to delivery.reporting_mta."""
    dsn_from: Mailbox = "MAILER-DAEMON@localhost.localdomain"
    """From: header of DSNs to senders (their envelope sender is always <>)."""
    delay_dsn: bool = False
    """Send one delay DSN (Action: delayed) to senders who asked for NOTIFY=DELAY."""
    delay_dsn_after_seconds: float = Field(default=4 * 3600, gt=0)
    dsn_attach_max_bytes: int = Field(default=1024 * 1024, ge=0)
    """RET=FULL returns the whole original up to this size, headers only above."""
    add_received: bool = True
    """Prepend a Received: trace header when relaying (RFC 5321 4.4); it counts hops."""
    max_received_headers: int = Field(default=50, ge=2)
    """Loop limit: a message arriving on a relay listener with more Received: headers is
    refused with 554 5.4.6 (Postfix's hopcount_limit)."""
    dns_timeout_seconds: float = Field(default=10, gt=0)


class MetricsConfig(Strict):
    host: Hostname = "127.0.0.1"
    ingest_port: int = Field(default=9101, ge=0, le=65535)
    """0 = disabled."""
    journal_port: int = Field(default=9102, ge=0, le=65535)
    delivery_port: int = Field(default=9103, ge=0, le=65535)
    relay_port: int = Field(default=9105, ge=0, le=65535)
    evidence_port: int = Field(default=9106, ge=0, le=65535)


class EvidenceConfig(Strict):
    """Signed, chained journal receipts (docs/evidence.md)."""

    enabled: bool = False
    """Run the receipt writer (``mailjournal receipts``; ``mailjournal run`` starts it)."""
    signing_key_file: Path | None = None
    """Ed25519 private key (PEM) that signs receipts; required when enabled
    (``mailjournal run`` creates it when missing)."""
    verify_key_files: list[Path] = []
    """Public keys (PEM) of retired signing keys: receipts they signed still verify."""
    checkpoint_interval_seconds: float = Field(default=60.0, gt=0)
    """A signed checkpoint of every chain head at most this often while receipts are written."""
    batch_max_ms: int = Field(default=200, ge=1)
    """Longest wait for more records before a batch's transaction is committed."""
    sync_interval_seconds: float = Field(default=1.0, gt=0)
    """How often the writer learns how far the journal worker has decided."""
    receipt_overdue_seconds: float = Field(default=3600.0, gt=0)
    """The audit names a message without a receipt this long after its copies became final."""

    @model_validator(mode="after")
    def _key_required(self) -> EvidenceConfig:
        if self.enabled and self.signing_key_file is None:
            raise ValueError("evidence.signing_key_file is required when evidence.enabled is true")
        return self


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Config(Strict):
    organization: OrganizationConfig
    journal: JournalConfig = JournalConfig()
    directory: DirectoryConfig = DirectoryConfig()
    kafka: KafkaConfig = KafkaConfig()
    ingest: IngestConfig = IngestConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    relay: RelayConfig = RelayConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    evidence: EvidenceConfig = EvidenceConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        uses_attr = any(
            self.journal.direction(d).active and self.journal.direction(d).recipient_attribute
            for d in Direction
        )
        if uses_attr and self.directory.backend == "none":
            raise ValueError(
                "directory.backend must be 'file' or 'ldap' when a journal.*.recipient_attribute "
                "is set (per-recipient journaling reads the directory)"
            )
        if self.directory.backend == "none":
            if self.ingest.verify_recipients:
                raise ValueError(
                    "ingest.verify_recipients needs directory.backend 'file' or 'ldap' "
                    "(the list of users)"
                )
            if self.ingest.sender_login_binding and any(lst.auth for lst in self.ingest.listeners):
                raise ValueError(
                    "ingest.sender_login_binding needs directory.backend 'file' or 'ldap' "
                    "when a listener has auth (the addresses each login may send as); "
                    "or set ingest.sender_login_binding = false"
                )
        if self.relays:
            missing = [d for d in ("inbound", "outbound") if getattr(self.relay, d) is None]
            if missing:
                raise ValueError(
                    "relay." + " and relay.".join(missing) + " must be set when a listener has "
                    "relay = true (every original needs a next hop)"
                )
        self._distinct_topics()
        self._route_defaults()
        return self

    def _route_defaults(self) -> None:
        """Routes: distinct names and patterns; STARTTLS off by default only for a route that
        stays inside the organisation (every destination an accepted domain)."""
        names: set[str] = set()
        patterns: dict[str, str] = {}
        for i, route in enumerate(self.delivery.routes):
            if route.name in names:
                raise ValueError(f"delivery.routes.{i}.name: {route.name!r} is used twice")
            names.add(route.name)
            for pattern in route.match:
                if pattern in patterns:
                    raise ValueError(
                        f"delivery.routes.{i}.match: {pattern!r} is also in route "
                        f"{patterns[pattern]!r}"
                    )
                patterns[pattern] = route.name
            internal = all(self.organization.is_internal_domain(d) for d in route.domains())
            pinned = route.tls_fingerprints or route.client_cert_file or route.authenticates
            if "starttls" not in route.model_fields_set and internal and not pinned:
                self.delivery.routes[i] = route.model_copy(update={"starttls": "off"})

    def _distinct_topics(self) -> None:
        """Every role its own topic, the retry tiers (``<name>.<i>``) included."""
        # not at the top: mailjournal.topics imports this module
        from mailjournal.topics import relay_retry_topic_names, retry_topic_names

        topics = self.kafka.topics
        roles = [
            (f"kafka.topics.{k}.name", t.name) for k, t in topics.all().items() if k != "retry"
        ]
        roles += [
            (f"kafka.topics.retry.name (tier {i})", name)
            for i, name in enumerate(retry_topic_names(self))
        ]
        if self.relays:
            roles += [
                (f"kafka.topics.relay_retry.name (tier {i})", name)
                for i, name in enumerate(relay_retry_topic_names(self))
            ]
        seen: dict[str, str] = {}
        for key, name in roles:
            if name in seen:
                raise ValueError(
                    f"{key}: topic {name!r} is also {seen[name]}; each role needs its own topic"
                )
            seen[name] = key

    def protected_keys(self) -> set[str]:
        """The journal and NDR addresses in :func:`~mailjournal.addresses.canonical` form."""
        delimiter = self.organization.recipient_delimiter
        return {canonical(a, delimiter) for a in self.journal.protected_addresses()}

    @property
    def relays(self) -> bool:
        """True when some listener is inline: the relay stage must run."""
        return any(lst.relay for lst in self.ingest.listeners)

    def relay_listeners(self) -> set[str]:
        return {lst.name for lst in self.ingest.listeners if lst.relay}


class ConfigError(Exception):
    """Configuration that cannot be used; ``errors`` lists one message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


# keys that were settings once: refused like any unknown key, but saying what became of them
REMOVED_KEYS = {
    "kafka.schema_registry_url": "removed: the Confluent Schema Registry wire format is no longer "
    "supported; every stage, the dlq and the audit use Avro single-object encoding (delete the key)",
}


def _format_validation_error(
    exc: ValidationError, env: Mapping[str, str] | None = None
) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = REMOVED_KEYS.get(
                loc, "unknown key (not a mailjournal setting; check the spelling)"
            )
        elif err["type"] == "missing":
            msg = "required key is missing"
        out.append(_with_source(f"{loc}: {msg}" if loc else msg, loc, env or {}))
    return out


def _env_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Setting path (``kafka.bootstrap_servers``) -> the ``MAILJOURNAL_...`` variable setting it."""
    return {
        ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__")): name
        for name in environ
        if name.startswith(ENV_PREFIX) and "__" in name
    }


def _with_source(line: str, loc: str, env: Mapping[str, str]) -> str:
    """``line`` naming the environment variable behind the value it is about, if any: the
    operator looks for a bad value in the file otherwise."""
    for path, name in env.items():
        about = loc == path or loc.startswith(path + ".")
        if about or ((path.startswith(loc + ".") or not loc) and path in line):
            return f"{line} (set by {name})"
    return line


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in sorted(environ.items()):
        # only names with "__" are overrides; MAILJOURNAL_CONFIG and friends are not settings
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError([f"{name}: empty segment in the setting's path"])
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([f"{name}: {'.'.join(path)} does not name a setting"])
            node = child
        node[path[-1]] = _parse_env_value(raw)
    return data


def load_config_dict(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    environ = os.environ if environ is None else environ
    data = apply_env_overrides(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, _env_settings(environ))) from None
    return _resolve_paths(config, path.parent)


def files_read_by(config: Config, stage: str) -> list[tuple[str, Path]]:
    """(key, path) of the files the stage (``ingest``, ``journal``, ``deliver``, ``relay``,
    ``audit``) reads when it starts or for every record."""
    out: list[tuple[str, Path | None]] = []
    if stage in ("journal", "deliver", "audit"):  # the loop-guard stamp: made or checked
        out.append(("journal.stamp_secret_file", config.journal.stamp_secret_file))
        out.append(
            ("journal.stamp_previous_secret_file", config.journal.stamp_previous_secret_file)
        )
    ingest_reads_directory = config.ingest.verify_recipients or (
        config.ingest.sender_login_binding and any(lst.auth for lst in config.ingest.listeners)
    )
    reads_directory = stage in ("journal", "audit") or (
        stage == "ingest" and ingest_reads_directory
    )
    if reads_directory and config.directory.backend == "ldap":
        ldap = config.directory.ldap
        assert ldap is not None
        out += [("directory.ldap.ca_file", ldap.ca_file)]
        out += [("directory.ldap.password_file", ldap.password_file)]
    if stage == "ingest":
        for i, lst in enumerate(config.ingest.listeners):
            out += [(f"ingest.listeners.{i}.tls_cert_file", lst.tls_cert_file)]
            out += [(f"ingest.listeners.{i}.tls_key_file", lst.tls_key_file)]
            if lst.auth:
                out += [(f"ingest.listeners.{i}.credentials_file", lst.credentials_file)]
    if stage == "receipts":
        out.append(("evidence.signing_key_file", config.evidence.signing_key_file))
        out += [
            (f"evidence.verify_key_files.{i}", f)
            for i, f in enumerate(config.evidence.verify_key_files)
        ]
    hops: list[tuple[str, SmartHostConfig | None]] = []
    if stage == "deliver":
        hops.append(("delivery.smart_host", config.delivery.smart_host))
        hops += [(f"delivery.routes.{i}", r) for i, r in enumerate(config.delivery.routes)]
    if stage == "relay":
        hops += [("relay.inbound", config.relay.inbound), ("relay.outbound", config.relay.outbound)]
        hops += [(f"relay.domains.{d}", hop) for d, hop in config.relay.domains.items()]
    for key, hop in hops:
        if hop is not None:
            out.append((f"{key}.ca_file", hop.ca_file))
            out.append((f"{key}.client_cert_file", hop.client_cert_file))
            out.append((f"{key}.client_key_file", hop.client_key_file))
            out.append((f"{key}.credentials_file", hop.credentials_file))
            if hop.username:
                out.append((f"{key}.password_file", hop.password_file))
    return [(key, path) for key, path in out if path is not None]


def file_problems(
    config: Config, stages: Iterable[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line per file the ``stages`` need that is missing or unreadable, naming its key: such
    a stage is refused at start rather than failing on its first connection or record."""
    env = _env_settings(os.environ if environ is None else environ)
    problems: dict[str, str] = {}
    for stage in stages:
        for key, path in files_read_by(config, stage):
            if not path.exists():
                why = "no such file"
            elif not path.is_file():
                why = "not a file"
            elif not os.access(path, os.R_OK):
                why = "not readable"
            elif key.startswith(("delivery.", "relay.")) and key.endswith(".credentials_file"):
                if _credentials_line(path):
                    continue
                why = "expected one 'username:password' line"
            else:
                continue
            problems[key] = _with_source(f"{key}: {path}: {why}", key, env)
    if config.journal.active and STAMP_STAGES.intersection(stages):
        try:
            config.journal.stamp_keys()
        except StampKeyError as exc:  # the message starts with the key it names
            key = str(exc).split(":", 1)[0]
            problems.setdefault(key, _with_source(str(exc), key, env))
    return list(problems.values())


def _credentials_line(path: Path) -> bool:
    """An SMTP client's credentials file starts with a ``username:password`` line."""
    lines = path.read_text(errors="replace").strip().splitlines()
    user, sep, _ = (lines[0] if lines else "").partition(":")
    return bool(user and sep)


# stages that make (deliver) or honour (journal, audit) the loop-guard stamp: with journaling
# on they refuse to start without a usable key
STAMP_STAGES = frozenset(("journal", "deliver", "audit"))


def add_config_argument(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--config FILE`` (default ``$MAILJOURNAL_CONFIG``), the same for every command; a command
    given neither reports it through :func:`load_config_or_report` (exit 2), like any other
    unusable configuration."""
    parser.add_argument(
        "--config",
        *aliases,
        default=os.environ.get("MAILJOURNAL_CONFIG"),
        help="configuration file (TOML; default $MAILJOURNAL_CONFIG)",
    )


def load_config_or_report(path: str | Path | None, stages: Iterable[str] = ()) -> Config | None:
    """For the commands: the configuration, or None after printing why it is unusable (one
    line per problem, each naming its key) to stderr. ``stages``: the stages the command runs,
    whose files (:func:`files_read_by`) must be readable too."""
    import sys

    if path is None:
        print("--config FILE (or MAILJOURNAL_CONFIG) is required", file=sys.stderr)
        return None
    try:
        config = load_config(path)
        problems = file_problems(config, stages)
        if problems:
            raise ConfigError(problems)
        return config
    except ConfigError as exc:
        print(f"{path}: configuration is invalid", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        return None


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative file paths in the config are relative to the config file."""

    def fix(model: BaseModel) -> BaseModel:
        updates: dict[str, Any] = {}
        for fname in type(model).model_fields:
            value = getattr(model, fname)
            if isinstance(value, Path) and not value.is_absolute():
                updates[fname] = (base / value).resolve()
            elif isinstance(value, BaseModel):
                fixed = fix(value)
                if fixed is not value:
                    updates[fname] = fixed
            elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
                updates[fname] = [fix(v) for v in value]
            elif isinstance(value, list) and value and isinstance(value[0], Path):
                updates[fname] = [v if v.is_absolute() else (base / v).resolve() for v in value]
        return model.model_copy(update=updates) if updates else model

    fixed = fix(config)
    assert isinstance(fixed, Config)
    return fixed


def _is_secret(key: str) -> bool:
    # password_file / password_env name where the secret lives, not the secret itself
    return ("password" in key or "secret" in key) and not key.endswith(("_file", "_env"))


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked (for ``config check``)."""

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if _is_secret(k) and v else mask(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [mask(v) for v in node]
        return node

    return mask(config.model_dump(mode="json"))
