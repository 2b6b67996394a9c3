"""Names, enum symbols, typed record shapes and id helpers for the mailjournal events.

The Avro schemas in ``schemas/avro/<Name>/v<N>.avsc`` are the source of truth; the classes here
mirror them for type checkers and readable code (``tests/test_schemas.py`` keeps both in sync).

Decoded records are plain dicts: enum fields hold ``str`` (the ``StrEnum`` members below compare
equal to them and can be written as-is), timestamp fields hold timezone-aware UTC ``datetime``
(encoding also accepts ``int`` milliseconds since the epoch).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NotRequired, TypedDict

NAMESPACE = "mailjournal.events"

# Schema names, as given to ``codec.encode`` / ``codec.decode(expected=...)``.
MESSAGE_RECEIVED = "MessageReceived"
JOURNAL_COPY = "JournalCopy"
DELIVERY_OUTCOME = "DeliveryOutcome"
DEAD_LETTER = "DeadLetter"
JOURNAL_RECEIPT = "JournalReceipt"
JOURNAL_CHECKPOINT = "JournalCheckpoint"
POLICY_CHANGE = "PolicyChange"

# Header fields whose values MessageReceived carries in SelectedHeaders.
JOURNAL_STAMP_HEADER = "X-MailJournal-Stamp"
MS_JOURNAL_REPORT_HEADER = "X-MS-Journal-Report"


class Direction(StrEnum):
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"
    INTERNAL = "INTERNAL"
    UNKNOWN = "UNKNOWN"  # also what old readers see for a symbol added later


class JournalSource(StrEnum):
    GLOBAL = "GLOBAL"
    RECIPIENT = "RECIPIENT"
    UNKNOWN = "UNKNOWN"


class ReportFormat(StrEnum):
    REPORT = "REPORT"
    COPY = "COPY"


class RecipientType(StrEnum):
    TO = "TO"
    CC = "CC"
    BCC = "BCC"
    RECIPIENT = "RECIPIENT"


class JournalCopyKind(StrEnum):
    JOURNAL = "JOURNAL"
    NDR = "NDR"
    RELAY = "RELAY"  # JournalCopy v2: an original (or a DSN to its sender) for the relay


class OutcomeStatus(StrEnum):
    DELIVERED = "DELIVERED"
    RETRYING = "RETRYING"
    NDR_SENT = "NDR_SENT"
    DEAD_LETTERED = "DEAD_LETTERED"
    UNKNOWN = "UNKNOWN"


class ListenerRole(StrEnum):
    """Values of MessageReceived.listener_role (a string in the schema, not an enum)."""

    INTERNET = "internet"
    RELAY = "relay"


# Avro enum name -> Python mirror; the tests compare symbols against the schemas.
ENUMS: dict[str, type[StrEnum]] = {
    "Direction": Direction,
    "JournalSource": JournalSource,
    "ReportFormat": ReportFormat,
    "RecipientType": RecipientType,
    "JournalCopyKind": JournalCopyKind,
    "OutcomeStatus": OutcomeStatus,
}


# ---------------------------------------------------------------------------------------------
# Record shapes (field names exactly as in the schemas); :mod:`schemas.records` builds them.

# A timestamp field: decoded, an aware UTC datetime; built in code, usually int milliseconds.
Timestamp = datetime | int


class ClientInfo(TypedDict):
    ip: str
    port: int
    helo: str
    proxied_by: str | None


class TlsInfo(TypedDict):
    version: str
    cipher: str


class MailParams(TypedDict):
    size: int | None
    body: str | None
    smtputf8: bool
    ret: str | None
    envid: str | None
    other: dict[str, str]


class Recipient(TypedDict):
    address: str
    notify: list[str] | None
    orcpt: str | None
    other: dict[str, str]


class SelectedHeaders(TypedDict):
    message_id: str | None
    subject: str | None
    from_: str | None
    to: str | None
    cc: str | None
    date: str | None
    auto_submitted: str | None
    journal_stamp: str | None
    ms_journal_report: str | None


class BodyFacts(TypedDict):
    """What a message's bytes are (mailjournal.smtp.wire.BodyFacts), learnt by ingest."""

    bare_eol: bool
    nul: bool
    long_line: bool
    eight_bit: bool
    dot_line: bool


class MessageReceived(TypedDict):
    event_id: str
    received_at: Timestamp
    ingest_host: str
    listener: str
    listener_role: str
    client: ClientInfo
    tls: TlsInfo | None
    auth_user: str | None
    mail_from: str
    mail_params: MailParams
    recipients: list[Recipient]
    headers: SelectedHeaders
    size: int
    sha256: str
    prepended_length: NotRequired[int]  # v2: ingest's fields at the start of raw
    received_sha256: NotRequired[str | None]  # v2: digest of raw[prepended_length:]
    message_id_added: NotRequired[bool]  # v2
    body_facts: NotRequired[BodyFacts | None]  # v3: the facts of raw
    raw: bytes | memoryview  # a view once decoded with tail_view (codec.Codec.decode)


class CoveredRecipient(TypedDict):
    address: str
    type: str  # RecipientType
    expanded: str | None
    forwarded: str | None


class RelayEnvelope(TypedDict):
    mail_params: MailParams
    recipients: list[Recipient]
    next_hop: str
    delay_notified: bool


class JournalCopy(TypedDict):
    copy_id: str
    event_id: str
    kind: str  # JournalCopyKind
    received_at: Timestamp
    directions: list[str]  # Direction
    sources: list[str]  # JournalSource
    journal_address: str
    ndr_address: str
    format: str  # ReportFormat
    original_sender: str
    recipients: list[CoveredRecipient]
    message_id: str | None
    subject: str | None
    attempt: int
    not_before: Timestamp
    first_attempt_at: Timestamp | None
    last_reply: str | None
    about_copy_id: str | None
    relay: RelayEnvelope | None
    policy_digest: NotRequired[str | None]  # v3
    replay_run: str | None  # v3, set by `mailjournal replay`: the run's id
    body_facts: NotRequired[BodyFacts | None]  # v4: the facts of original
    original: bytes | memoryview  # a view once decoded with tail_view (codec.Codec.decode)


class DeliveryOutcome(TypedDict):
    copy_id: str
    event_id: str
    kind: str  # JournalCopyKind
    status: str  # OutcomeStatus
    journal_address: str
    ndr_address: str
    directions: list[str]  # Direction
    attempts: int
    remote_reply: str | None
    at: Timestamp
    next_attempt_at: Timestamp | None
    ndr_copy_id: str | None
    delivered_to_host: str | None


class DeadLetter(TypedDict):
    id: str
    at: Timestamp
    reason: str
    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    copy_id: str | None
    event_id: str | None


class ReceiptClient(TypedDict):
    ip: str
    helo: str
    auth_user: str | None
    listener: str
    listener_role: str
    tls: bool
    trusted: bool


class ReceiptCopy(TypedDict):
    copy_id: str
    journal_address: str
    format: str
    directions: list[str]
    status: str
    last_reply: str | None
    delivered_to_host: str | None
    ndr_copy_id: str | None
    attempts: int
    final_at: int
    policy_digest: str | None


class JournalReceipt(TypedDict):
    event_id: str
    partition: int
    seq: int
    prev_hash: str
    written_at: int
    received_at: int
    message_sha256: str
    size: int
    mail_from: str
    recipients: list[str]
    directions: list[str]
    client: ReceiptClient
    copies: list[ReceiptCopy]
    policy_digest: str | None
    key_id: str
    signature: str


class CheckpointHead(TypedDict):
    partition: int
    seq: int
    hash: str
    written_at: int


class JournalCheckpoint(TypedDict):
    checkpoint_id: str
    at: int
    heads: list[CheckpointHead]
    policy_digest: str
    key_id: str
    signature: str


class PolicyChange(TypedDict):
    change_id: str
    at: int
    old_digest: str | None
    new_digest: str
    policy: str
    key_id: str
    signature: str


# ---------------------------------------------------------------------------------------------
# Time helpers.

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # what not_before = 0 ("now") decodes to
_ONE_MS = timedelta(milliseconds=1)


def now_millis() -> int:
    return time.time_ns() // 1_000_000


def to_millis(value: Timestamp | None) -> int:
    """Milliseconds since the epoch of a timestamp field, whichever form it holds (see
    :data:`Timestamp`); a naive datetime is taken as UTC (as fastavro does), None (a field never
    set) as 0.

    Exact integer arithmetic: ``int(dt.timestamp() * 1000)`` goes through a float and comes
    out one millisecond short for some values (none in the 2020s, but e.g. in 2004 or 2039)."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - EPOCH) // _ONE_MS
    return int(value)


def from_millis(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


# ---------------------------------------------------------------------------------------------
# Event ids: ULIDs (https://github.com/ulid/spec): 48-bit ms timestamp + 80 random bits,
# 26 characters of Crockford base32, so lexical order is time order. Monotonic within a
# process: inside one millisecond (or if the clock steps back) the random part is incremented
# instead of redrawn, so ids from one producer never sort out of creation order.

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_CROCKFORD)}
# Two characters (10 bits) per lookup halves the Python-level work of formatting.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


class _UlidState:
    __slots__ = ("last_ms", "last_rand", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = -1
        self.last_rand = 0

    def reset(self) -> None:
        # After fork the child must not continue the parent's sequence: both would increment
        # the same random value within the same millisecond and produce equal ids.
        self.lock = threading.Lock()
        self.last_ms = -1
        self.last_rand = 0


_state = _UlidState()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_state.reset)


def _fresh_random() -> int:
    # 79 bits: the top bit stays clear so increments within a millisecond cannot overflow.
    return int.from_bytes(os.urandom(10), "big") >> 1


def new_event_id() -> str:
    """A new time-ordered unique id (26-char ULID), strictly increasing within this process."""
    ms = time.time_ns() // 1_000_000
    st = _state
    with st.lock:
        if ms > st.last_ms:
            rand = _fresh_random()
        else:
            ms = st.last_ms  # same millisecond, or the clock stepped back: keep order
            rand = st.last_rand + 1
            if rand > _RANDOM_MASK:  # practically unreachable; move to the next millisecond
                ms += 1
                rand = _fresh_random()
        st.last_ms = ms
        st.last_rand = rand
    value = (ms << _RANDOM_BITS) | rand
    # 128 bits -> 26 chars: the leading char carries the top 3 bits, then 25 chars of 5 bits.
    pairs = _PAIRS
    return (
        _CROCKFORD[value >> 125]
        + "".join(
            [pairs[(value >> s) & 0x3FF] for s in (115, 105, 95, 85, 75, 65, 55, 45, 35, 25, 15, 5)]
        )
        + _CROCKFORD[value & 0x1F]
    )


def event_id_millis(event_id: str) -> int:
    """The millisecond timestamp embedded in an id made by :func:`new_event_id`."""
    if len(event_id) != 26:
        raise ValueError(f"not a 26-character ULID: {event_id!r}")
    ms = 0
    try:
        for c in event_id[:10].upper():
            ms = (ms << 5) | _DECODE[c]
    except KeyError:
        raise ValueError(f"not a Crockford base32 ULID: {event_id!r}") from None
    return ms


def event_id_datetime(event_id: str) -> datetime:
    return from_millis(event_id_millis(event_id))


# ---------------------------------------------------------------------------------------------
# Copy ids: deterministic, so a journal worker that re-processes a message after a crash emits
# the same copy_id (and delivery sends the same Message-ID) and duplicates are recognisable.


def make_copy_id(event_id: str, journal_address: str) -> str:
    """copy_id of the journal copy of ``event_id`` for ``journal_address`` (case-insensitive).

    The event id prefix keeps copy ids time-ordered and easy to trace back to the message.
    """
    digest = hashlib.sha256(journal_address.strip().lower().encode("utf-8")).hexdigest()
    return f"{event_id}.{digest[:16]}"


def make_ndr_copy_id(about_copy_id: str) -> str:
    """copy_id of the NDR reporting on ``about_copy_id`` (at most one NDR per copy)."""
    return f"{about_copy_id}.ndr"
