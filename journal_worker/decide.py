"""Which journal copies a message owes: pure functions, no I/O.

The worker (and later the audit) calls them in two steps, through a :class:`Decider` made once
per configuration (or the one-shot functions :func:`needed_lookups` and :func:`decide`):

1. :meth:`Decider.plan` names the directory lookups the decision depends on
   (attribute, address);
2. the caller resolves them (directory, cache, retries) into a mapping built with
   :func:`lookup_key`, then :meth:`Decider.decide` computes the :class:`Decision`.

Given the same event, configuration, stamp key and directory answers, the decision has the same
copies with the same ids, so a re-run after a crash or an audit reproduces them exactly.

Direction of each envelope recipient, from who submitted it (BRIEF section 4): the client is
*trusted* when it is on a trusted network, authenticated, or on a ``relay`` listener
(:mod:`mailjournal.trust`, the rule ingest applied to the same session). Journal, NDR
and archive addresses are removed first (never journaled).

* trusted, external recipient -> ``OUTBOUND`` whatever the MAIL FROM (null included): mail that
  leaves through us is outbound because of who submitted it;
* trusted, internal recipient -> ``INTERNAL`` when the sender is internal, else ``INBOUND`` (a
  trusted upstream filter relaying Internet mail; a null sender proves nothing either);
* untrusted, internal recipient -> ``INBOUND`` whatever the MAIL FROM (a spoofed internal sender);
* untrusted, external recipient -> ingest refuses it (relay denied); should such an event exist,
  ``OUTBOUND`` (fail safe: journal it).

A valid loop-guard stamp (:mod:`mailjournal.stamp`: our MAC over this message's body and its
destination) exempts only the recipient it was made for -- the journal or NDR address our report
or NDR went to -- never anyone else the same message is sent to.

Per-recipient journaling: inbound reads the attribute of each internal recipient, outbound that
of the internal submitter (the authenticated identity when it is an internal address, else the
MAIL FROM); internal->internal (when on) reads both, the recipient's and the
sender's, so a supervisor sees internal mail of the person they watch either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any

from mailjournal.addresses import AddressError, canonical, key, validate_mailbox
from mailjournal.config import Config
from mailjournal.config import Direction as CfgDirection
from mailjournal.config import ReportFormat as CfgFormat
from mailjournal.stamp import Stamp, verify_stamp
from mailjournal.trust import event_client_trusted
from schemas.events import (
    Direction,
    JournalCopy,
    JournalCopyKind,
    JournalSource,
    RecipientType,
    ReportFormat,
    make_copy_id,
    to_millis,
)
from schemas.records import covered_recipient, journal_copy

# Reasons a message owes no copy (label values of the skip metric).
SKIP_STAMPED = "stamped"  # our journal copy, to the destination its valid stamp names
SKIP_OWN_NDR = "own_ndr"  # null sender and our valid stamp: an NDR we generated, to its address
SKIP_JOURNAL_RECIPIENTS_ONLY = "journal_recipients_only"  # only journal / NDR addresses
SKIP_NOT_JOURNALED = "not_journaled"  # no recipient in a direction with journaling on
SKIP_NO_JOURNAL_ADDRESS = "no_journal_address"  # per-recipient only, nobody has an address
SKIP_REASONS = (
    SKIP_STAMPED,
    SKIP_OWN_NDR,
    SKIP_JOURNAL_RECIPIENTS_ONLY,
    SKIP_NOT_JOURNALED,
    SKIP_NO_JOURNAL_ADDRESS,
)

_DIRECTION_ORDER = (Direction.INBOUND, Direction.OUTBOUND, Direction.INTERNAL)
_SOURCE_ORDER = (JournalSource.GLOBAL, JournalSource.RECIPIENT)
_CFG = {
    Direction.INBOUND: CfgDirection.INBOUND,
    Direction.OUTBOUND: CfgDirection.OUTBOUND,
    Direction.INTERNAL: CfgDirection.INTERNAL,
}

LookupKey = tuple[str, str]  # (attribute case-folded, address case-folded)
Answers = Mapping[LookupKey, Sequence[str]]


def lookup_key(attribute: str, address: str) -> LookupKey:
    """Key of a directory answer in the mapping given to :func:`decide` (LDAP attribute names
    and mail addresses both compare case-insensitively)."""
    return (attribute.casefold(), key(address))


class MissingAnswer(LookupError):
    """:func:`decide` needed a directory answer the caller did not supply (a caller bug)."""


@dataclass(frozen=True)
class Covered:
    address: str
    type: RecipientType


@dataclass(frozen=True)
class PlannedCopy:
    copy_id: str
    journal_address: str
    ndr_address: str
    directions: tuple[Direction, ...]
    sources: tuple[JournalSource, ...]
    format: ReportFormat
    recipients: tuple[Covered, ...]


@dataclass(frozen=True)
class InvalidValue:
    """A directory attribute value that is not a usable journal address: logged and counted,
    never turned into a copy to a wrong address."""

    address: str  # whose attribute
    attribute: str
    value: str
    direction: Direction


@dataclass(frozen=True)
class Decision:
    event_id: str
    copies: tuple[PlannedCopy, ...]
    skip_reason: str | None  # set when no copy is owed
    directions: tuple[tuple[str, Direction | None], ...]  # envelope recipient -> direction
    protected_recipients: tuple[str, ...] = ()  # journal/NDR addresses among the recipients
    invalid_values: tuple[InvalidValue, ...] = field(default=())
    # header fields that could not be parsed (their recipients were typed Recipient:), as
    # "field: error" for the log; counted by the worker
    header_errors: tuple[str, ...] = ()
    # the envelope-only fallback (:func:`fallback_decision`) made this decision: why
    fallback: str | None = None


@dataclass(frozen=True)
class _Facts:
    event_id: str
    sender: str
    submitter: str  # whose per-sender attribute is read: internal auth identity, else sender
    trusted: bool
    origin_internal: bool  # trusted and the sender internal or null: it knows whom it Bcc'd
    stamped: bool  # a valid stamp exempted a recipient
    recipients: tuple[str, ...]  # envelope recipients, deduplicated, journal/NDR ones removed
    protected: tuple[str, ...]
    directions: tuple[tuple[str, Direction | None], ...]


def direction_of(trusted: bool, sender_internal: bool, recipient_internal: bool) -> Direction:
    """The direction rule of the module docstring for one recipient."""
    if not recipient_internal:
        return Direction.OUTBOUND  # untrusted: refused at RCPT; should it exist, journal it
    if trusted and sender_internal:
        return Direction.INTERNAL
    return Direction.INBOUND


def _stamp(event: Mapping[str, Any], keys: Sequence[bytes], max_age_seconds: int) -> Stamp | None:
    value = (event.get("headers") or {}).get("journal_stamp")
    if not value or not keys:
        return None
    return verify_stamp(
        value,
        bytes(event.get("raw") or b""),
        keys,
        received_ms=to_millis(event.get("received_at")),
        max_age_seconds=max_age_seconds,
    )


def _facts(
    event: Mapping[str, Any],
    config: Config,
    stamp_keys: Sequence[bytes],
    protected_keys: set[str],
) -> _Facts:
    org = config.organization
    sender = str(event.get("mail_from") or "")
    trusted = event_client_trusted(event, config.organization.trusted_networks)
    sender_internal = org.is_internal_address(sender)
    auth = str(event.get("auth_user") or "")
    submitter = auth if org.is_internal_address(auth) else sender
    stamp = _stamp(event, stamp_keys, config.journal.stamp_max_age_seconds)
    exempt = canonical(stamp.destination, org.recipient_delimiter) if stamp else None
    seen: set[str] = set()
    recipients: list[str] = []
    protected: list[str] = []
    stamped = False
    for rcpt in event.get("recipients") or ():
        address = str(rcpt["address"])
        k = key(address)
        if k in seen:
            continue
        seen.add(k)
        protected_key = canonical(address, org.recipient_delimiter)
        if protected_key == exempt:
            stamped = True  # our report or NDR arriving where we sent it: the loop
        (
            protected if protected_key in protected_keys or protected_key == exempt else recipients
        ).append(address)
    directions: list[tuple[str, Direction | None]] = [
        (a, direction_of(trusted, sender_internal, org.is_internal_address(a))) for a in recipients
    ]
    return _Facts(
        event_id=str(event["event_id"]),
        sender=sender,
        submitter=submitter,
        trusted=trusted,
        origin_internal=trusted and (sender == "" or sender_internal),
        stamped=stamped,
        recipients=tuple(recipients),
        protected=tuple(protected),
        directions=tuple(directions),
    )


def _lookups_by_direction(facts: _Facts, config: Config) -> list[tuple[Direction, str, str]]:
    """(direction, attribute, address whose attribute is read) in a stable order: inbound and
    internal read each recipient's, outbound and internal the submitter's when it is internal
    (the directory knows only our own people)."""
    out: list[tuple[Direction, str, str]] = []
    submitter_internal = config.organization.is_internal_address(facts.submitter)
    for direction in _DIRECTION_ORDER:
        dcfg = config.journal.direction(_CFG[direction])
        if not dcfg.active or not dcfg.recipient_attribute:
            continue
        rcpts = [a for a, d in facts.directions if d is direction]
        if not rcpts:
            continue
        attr = dcfg.recipient_attribute
        if direction in (Direction.INBOUND, Direction.INTERNAL):
            out.extend((direction, attr, a) for a in rcpts)
        if direction in (Direction.OUTBOUND, Direction.INTERNAL) and submitter_internal:
            out.append((direction, attr, facts.submitter))
    return out


def _skip_before_lookup(facts: _Facts) -> str | None:
    if facts.recipients:
        return None  # a stamp exempts its own destination only: the others are journaled
    if facts.stamped:
        return SKIP_OWN_NDR if facts.sender == "" else SKIP_STAMPED
    return SKIP_JOURNAL_RECIPIENTS_ONLY


def _header_keys(value: str | None) -> set[str]:
    if not value:
        return set()
    return {key(addr) for _, addr in getaddresses([value]) if addr}


def _readable_header_keys(value: str | None, name: str, errors: list[str]) -> set[str] | None:
    """:func:`_header_keys`, or None (and the error noted) when the field cannot be parsed: the
    sender writes these fields, and ``getaddresses`` raises on crafted ones (``RecursionError``
    on deep nesting, ``ValueError``, ...). Any exception: a recipient's type is only a label,
    never a reason to lose its copy."""
    try:
        return _header_keys(value)
    except Exception as exc:
        errors.append(f"{name}: {type(exc).__name__}")
        return None


def recipient_types(
    event: Mapping[str, Any],
    recipients: Iterable[str],
    trusted_submitter: bool,
    errors: list[str] | None = None,
) -> dict[str, RecipientType]:
    """To / Cc when the envelope recipient appears in that header (To wins); otherwise Bcc when
    the submitter is ours (it knows whom it Bcc'd), else Recipient: inbound mail reaches people
    through lists and aliases, so an unlisted inbound recipient is not asserted to be a Bcc.

    When To or Cc cannot be parsed, a recipient not found in a readable one is ``Recipient:``
    (we cannot tell To, Cc or Bcc); the field's error is appended to ``errors``."""
    errors = [] if errors is None else errors
    headers = event.get("headers") or {}
    to = _readable_header_keys(headers.get("to"), "to", errors)
    cc = _readable_header_keys(headers.get("cc"), "cc", errors)
    unreadable = to is None or cc is None
    out: dict[str, RecipientType] = {}
    for address in recipients:
        k = key(address)
        if to is not None and k in to:
            out[k] = RecipientType.TO
        elif cc is not None and k in cc:
            out[k] = RecipientType.CC
        elif unreadable:
            out[k] = RecipientType.RECIPIENT
        elif trusted_submitter:
            out[k] = RecipientType.BCC
        else:
            out[k] = RecipientType.RECIPIENT
    return out


def _journal_addresses(
    values: Sequence[str], owner: str, attribute: str, direction: Direction
) -> tuple[list[str], list[InvalidValue]]:
    good: list[str] = []
    bad: list[InvalidValue] = []
    for raw in values:
        value = str(raw).strip()
        if not value:
            continue  # an empty attribute value means "not journaled"
        try:
            good.append(validate_mailbox(value))
        except AddressError:
            bad.append(InvalidValue(owner, attribute, value, direction))
    return good, bad


def copy_id_for(event_id: str, journal_address: str, ndr_address: str, split: bool) -> str:
    """The schema's copy id (event id + journal address); when one journal address is owed
    with two NDR addresses (two copies), each gets the NDR address folded in as well."""
    base = make_copy_id(event_id, journal_address)
    if not split:
        return base
    return f"{base}.{hashlib.sha256(key(ndr_address).encode()).hexdigest()[:8]}"


@dataclass
class _Group:
    journal_address: str
    ndr_address: str
    directions: set[Direction] = field(default_factory=set)
    sources: set[JournalSource] = field(default_factory=set)
    recipients: dict[str, str] = field(default_factory=dict)  # key -> address


@dataclass(frozen=True)
class Plan:
    """What a decision about one event depends on: its facts and the directory lookups
    (attribute, address) it needs, deduplicated (empty when the message is skipped anyway or
    nothing is per-recipient)."""

    event: Mapping[str, Any]
    facts: _Facts
    skip: str | None
    lookups: tuple[tuple[str, str], ...]


class Decider:
    """The decision functions for one configuration, with its derived data computed once."""

    def __init__(self, config: Config, stamp_key: bytes | Sequence[bytes] | None):
        """``stamp_key``: the current key (the configured previous one verifies too), or the
        keys that verify stamps; None or none: no stamp is honoured."""
        self.config = config
        if isinstance(stamp_key, bytes):
            keys: tuple[bytes, ...] = (stamp_key,)
            previous = config.journal.stamp_previous_secret_file
            if previous is not None:
                keys += config.journal.stamp_keys()[1:]
        else:
            keys = tuple(stamp_key or ())
        self.stamp_keys = keys
        self.protected = config.protected_keys()

    def plan(self, event: Mapping[str, Any]) -> Plan:
        facts = _facts(event, self.config, self.stamp_keys, self.protected)
        skip = _skip_before_lookup(facts)
        lookups: dict[LookupKey, tuple[str, str]] = {}
        if not skip:
            for _, attr, address in _lookups_by_direction(facts, self.config):
                lookups.setdefault(lookup_key(attr, address), (attr, address))
        return Plan(event, facts, skip, tuple(lookups.values()))

    def decide(self, plan: Plan, answers: Answers) -> Decision:
        """The journal copies the planned event owes. ``answers`` holds, for every lookup of
        the plan, the attribute's values (empty when the entry or attribute is absent); a
        missing answer raises :class:`MissingAnswer` rather than dropping a copy."""
        facts, event = plan.facts, plan.event
        if plan.skip:
            return Decision(facts.event_id, (), plan.skip, facts.directions, facts.protected)

        groups: dict[tuple[str, str], _Group] = {}
        invalid: list[InvalidValue] = []

        def owe(
            journal: str, direction: Direction, source: JournalSource, covered: Iterable[str]
        ) -> None:
            _owe(groups, self.config, journal, direction, source, covered)

        _owe_global(groups, self.config, facts.directions)

        for direction, attr, owner in _lookups_by_direction(facts, self.config):
            try:
                values = answers[lookup_key(attr, owner)]
            except KeyError:
                raise MissingAnswer(f"no directory answer for {attr} of {owner}") from None
            addresses, bad = _journal_addresses(values, owner, attr, direction)
            invalid.extend(bad)
            is_sender = key(owner) == key(facts.submitter) and direction is not Direction.INBOUND
            # the sender's attribute covers every recipient of the direction; a recipient's
            # attribute covers that recipient
            covered = [a for a, d in facts.directions if d is direction] if is_sender else [owner]
            for journal in addresses:
                owe(journal, direction, JournalSource.RECIPIENT, covered)

        if not groups:
            journaled = any(
                d is not None and self.config.journal.direction(_CFG[d]).active
                for _, d in facts.directions
            )
            reason = SKIP_NO_JOURNAL_ADDRESS if journaled else SKIP_NOT_JOURNALED
            return Decision(
                facts.event_id, (), reason, facts.directions, facts.protected, tuple(invalid)
            )

        header_errors: list[str] = []
        types = recipient_types(event, facts.recipients, facts.origin_internal, header_errors)
        copies = _planned_copies(self.config, facts.event_id, groups, facts.recipients, types)
        return Decision(
            facts.event_id,
            copies,
            None,
            facts.directions,
            facts.protected,
            tuple(invalid),
            tuple(header_errors),
        )


def _owe(
    groups: dict[tuple[str, str], _Group],
    config: Config,
    journal: str,
    direction: Direction,
    source: JournalSource,
    covered: Iterable[str],
) -> None:
    ndr = config.journal.direction(_CFG[direction]).ndr_address
    assert ndr is not None  # the config refuses an active direction without it
    g = groups.get((key(journal), key(ndr)))
    if g is None:
        g = groups[(key(journal), key(ndr))] = _Group(journal, ndr)
    g.directions.add(direction)
    g.sources.add(source)
    for address in covered:
        g.recipients.setdefault(key(address), address)


def _owe_global(
    groups: dict[tuple[str, str], _Group],
    config: Config,
    directions: Sequence[tuple[str, Direction | None]],
) -> None:
    """The global copy of each active direction that has a recipient."""
    for direction in _DIRECTION_ORDER:
        dcfg = config.journal.direction(_CFG[direction])
        rcpts = [a for a, d in directions if d is direction]
        if dcfg.active and rcpts:
            for address in dcfg.addresses:
                _owe(groups, config, address, direction, JournalSource.GLOBAL, rcpts)


def _planned_copies(
    config: Config,
    event_id: str,
    groups: Mapping[tuple[str, str], _Group],
    recipients: Sequence[str],
    types: Mapping[str, RecipientType],
) -> tuple[PlannedCopy, ...]:
    ndrs_per_journal: dict[str, int] = {}
    for jk, _ in groups:
        ndrs_per_journal[jk] = ndrs_per_journal.get(jk, 0) + 1
    order = {key(a): i for i, a in enumerate(recipients)}
    copies = []
    for (jk, _), g in groups.items():
        formats = {config.journal.format_for(_CFG[d]) for d in g.directions}
        # one copy serving directions with different formats: the report carries the
        # original attached unaltered, so it satisfies a "copy" direction too
        fmt = ReportFormat.COPY if formats == {CfgFormat.COPY} else ReportFormat.REPORT
        covered = sorted(g.recipients, key=order.__getitem__)
        copies.append(
            PlannedCopy(
                copy_id=copy_id_for(
                    event_id, g.journal_address, g.ndr_address, ndrs_per_journal[jk] > 1
                ),
                journal_address=g.journal_address,
                ndr_address=g.ndr_address,
                directions=tuple(d for d in _DIRECTION_ORDER if d in g.directions),
                sources=tuple(s for s in _SOURCE_ORDER if s in g.sources),
                format=fmt,
                recipients=tuple(Covered(g.recipients[k], types[k]) for k in covered),
            )
        )
    return tuple(copies)


def _envelope_directions(
    event: Mapping[str, Any], config: Config, protected: set[str]
) -> list[tuple[str, tuple[Direction, ...]]]:
    """Each envelope recipient (journal/NDR addresses left out) and the directions it may have,
    by the team's direction rule read from the envelope and the client's trust alone: external
    -> outbound (whoever submitted it: trusted, or refused at RCPT anyway); internal -> internal
    when the client is trusted and the sender internal, else inbound. Whatever cannot be read
    (an exception of any type) counts as every direction: the fallback journals rather than
    skips."""
    org = config.organization
    every = _DIRECTION_ORDER
    try:
        sender = str(event.get("mail_from") or "")
        internal_origin: bool | None = event_client_trusted(event, org.trusted_networks) and bool(
            sender and org.is_internal_address(sender)
        )
    except Exception:
        internal_origin = None
    out: list[tuple[str, tuple[Direction, ...]]] = []
    seen: set[str] = set()
    for rcpt in event.get("recipients") or ():
        try:
            address = str(rcpt["address"])
            k = key(address)
        except Exception:
            continue  # no address at all: nothing to deliver to, nothing to journal for it
        if k in seen or canonical(address, org.recipient_delimiter) in protected:
            continue
        seen.add(k)
        try:
            internal = org.is_internal_address(address)
        except Exception:
            out.append((address, every))
            continue
        if not internal:
            out.append((address, (Direction.OUTBOUND,)))
        elif internal_origin is None:
            out.append((address, (Direction.INBOUND, Direction.INTERNAL)))
        else:
            out.append((address, (Direction.INTERNAL if internal_origin else Direction.INBOUND,)))
    return out


def fallback_decision(event: Mapping[str, Any], config: Config, reason: str) -> Decision:
    """The decision when :class:`Decider` raised on ``event`` (a library bug, a recursion, an
    unencodable field): the global copies of the message's directions from the envelope alone
    (:func:`_envelope_directions`), every covered recipient typed ``Recipient:``. No header,
    stamp or directory is read: an accepted message always owes at least these copies. Copy
    ids are the usual ones, so a later full decision (a replay after a fix) or the audit yields
    the same copies."""
    event_id = str(event["event_id"])
    protected = config.protected_keys()
    candidates = _envelope_directions(event, config, protected)
    groups: dict[tuple[str, str], _Group] = {}
    for direction in _DIRECTION_ORDER:
        dcfg = config.journal.direction(_CFG[direction])
        rcpts = [a for a, ds in candidates if direction in ds]
        if dcfg.active and rcpts:
            for address in dcfg.addresses:
                _owe(groups, config, address, direction, JournalSource.GLOBAL, rcpts)
    recipients = [a for a, _ in candidates]
    directions = tuple((a, ds[0] if len(ds) == 1 else None) for a, ds in candidates)
    protected_rcpts = tuple(
        str(r.get("address"))
        for r in event.get("recipients") or ()
        if isinstance(r, Mapping)
        and canonical(str(r.get("address") or ""), config.organization.recipient_delimiter)
        in protected
    )
    if not groups:
        skip = SKIP_NOT_JOURNALED if recipients else SKIP_JOURNAL_RECIPIENTS_ONLY
        return Decision(event_id, (), skip, directions, protected_rcpts, fallback=reason)
    types = dict.fromkeys((key(a) for a in recipients), RecipientType.RECIPIENT)
    copies = _planned_copies(config, event_id, groups, recipients, types)
    return Decision(event_id, copies, None, directions, protected_rcpts, fallback=reason)


def needed_lookups(
    event: Mapping[str, Any], config: Config, stamp_key: bytes | Sequence[bytes] | None
) -> list[tuple[str, str]]:
    """Directory lookups (attribute, address) that :func:`decide` needs for this event."""
    return list(Decider(config, stamp_key).plan(event).lookups)


def decide(
    event: Mapping[str, Any],
    config: Config,
    answers: Answers,
    stamp_key: bytes | Sequence[bytes] | None,
) -> Decision:
    """The journal copies ``event`` owes (see :meth:`Decider.decide`)."""
    decider = Decider(config, stamp_key)
    return decider.decide(decider.plan(event), answers)


def journal_copy_record(
    event: Mapping[str, Any],
    copy: PlannedCopy,
    *,
    header_text: bool = True,
    policy_digest: str | None = None,
) -> JournalCopy:
    """The ``JournalCopy`` event for a planned copy (first attempt, deliver now); without
    ``header_text``, no subject or Message-ID (the record to fall back on when they cannot be
    encoded)."""
    headers = (event.get("headers") or {}) if header_text else {}
    return journal_copy(
        copy_id=copy.copy_id,
        event_id=str(event["event_id"]),
        kind=JournalCopyKind.JOURNAL,
        received_at=event["received_at"],
        directions=copy.directions,
        sources=copy.sources,
        journal_address=copy.journal_address,
        ndr_address=copy.ndr_address,
        format=copy.format,
        original_sender=str(event.get("mail_from") or ""),
        recipients=[covered_recipient(r.address, r.type) for r in copy.recipients],
        message_id=headers.get("message_id"),
        subject=headers.get("subject"),
        original=event["raw"],
        body_facts=event.get("body_facts"),
        policy_digest=policy_digest,
    )
