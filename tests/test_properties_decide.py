"""Property-based tests of the journal decision (journal_worker/decide.py).

Random configurations (directions on/off, global and per-recipient journaling, shared and
case-variant journal/NDR addresses, formats, a stamp key or none), random envelopes (internal,
external, SMTPUTF8, IDN, quoted and garbage addresses, duplicates, journal/NDR addresses among
the recipients, trusted/untrusted/authenticated/relay clients) and random directory answers
(valid, external, invalid, hostile values). The expected copies are computed here from the rules
of BRIEF section 4 and the module docstring, independently of the module's code.
"""

from __future__ import annotations

import copy as copy_module
import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from delivery.ndr import build_ndr
from delivery.report import build_message
from ingest.headers import selected_headers
from journal_worker.decide import (
    SKIP_JOURNAL_RECIPIENTS_ONLY,
    SKIP_NO_JOURNAL_ADDRESS,
    SKIP_NOT_JOURNALED,
    SKIP_OWN_NDR,
    SKIP_STAMPED,
    Decider,
    Decision,
    MissingAnswer,
    copy_id_for,
    journal_copy_record,
    lookup_key,
)
from mailjournal.addresses import is_valid_mailbox, key, validate_mailbox
from mailjournal.config import Config, load_config_dict
from mailjournal.dsn import Failure
from mailjournal.stamp import body_of, make_stamp
from schemas.events import Direction, JournalSource, RecipientType, ReportFormat, make_copy_id
from tests.fixtures.config import PREVIOUS_STAMP_KEY_FILE, STAMP_KEY, STAMP_KEY_FILE
from tests.strategies import (
    EXTERNAL_DOMAINS,
    address,
    arbitrary_message,
    case_variant,
    garbage_address,
    hostile_text,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ACCEPTED = "corp.example"
INTERNAL_DOMAINS = [ACCEPTED, "CORP.Example", "sub.corp.example", "bücher.example"]
JOURNALS = [
    "journal@corp.example",
    "journal@corp.example",  # (twice: directions that share an address are the hard case)
    "journal-in@corp.example",
    "journal-out@corp.example",
    "JOURNAL@corp.example",  # the same mailbox as the one above
    "archive@vendor.example",  # an outside archive service
    "jörnal@corp.example",
]
NDRS = ["journal-ndr@corp.example", "journal-ndr-in@corp.example", "NDR@corp.example"]
ATTRS = [None, "extensionAttribute10", "journalAddress"]
SECRET = str(STAMP_KEY_FILE)
RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
RECEIVED_MS = int(RECEIVED.timestamp() * 1000)
RAW = b"Subject: x\r\n\r\nbody\r\n"
WRONG_KEY = bytes(range(32))


def good_stamp(destination: str, raw: bytes = RAW) -> str:
    """What delivery puts on a report for ``destination`` whose body is ``raw``'s."""
    return make_stamp("some-copy", destination, RECEIVED_MS - 60_000, body_of(raw), STAMP_KEY)


def forged_stamps(destination: str) -> list[str]:
    """No MAC; another key; another body (lifted); expired; version 1."""
    return [
        f"v2; copy=some-copy; to={destination}; t={RECEIVED_MS}",
        make_stamp("some-copy", destination, RECEIVED_MS, body_of(RAW), WRONG_KEY),
        make_stamp("some-copy", destination, RECEIVED_MS, b"another body\r\n", STAMP_KEY),
        make_stamp("some-copy", destination, RECEIVED_MS - 8 * 86400_000, body_of(RAW), STAMP_KEY),
        "v1; copy=some-copy; mac=0123456789abcdef0123456789abcdef",
    ]


DIRECTIONS = (Direction.INBOUND, Direction.OUTBOUND, Direction.INTERNAL)


# -- configuration ------------------------------------------------------------------------------

direction_spec = st.tuples(
    st.sampled_from([True, True, True, False]),  # enabled
    st.sampled_from([None, *JOURNALS]),  # address
    st.sampled_from(NDRS),  # ndr_address
    st.sampled_from(ATTRS),  # recipient_attribute
    st.sampled_from([None, "report", "copy"]),  # format
)
config_spec = st.tuples(
    st.tuples(direction_spec, direction_spec, direction_spec),
    st.booleans(),  # include_subdomains
    st.booleans(),  # IDN accepted domain
    st.sampled_from([None, str(PREVIOUS_STAMP_KEY_FILE)]),  # a previous key (rotation) or none
    st.sampled_from(["report", "copy"]),
)


@functools.lru_cache(maxsize=512)
def build_config(spec: tuple[Any, ...]) -> Config:
    dirs, subdomains, idn, secret, fmt = spec
    # a key is required with journaling on: always the current one, sometimes a previous one
    journal: dict[str, Any] = {
        "sender": "mailjournal@corp.example",
        "format": fmt,
        "stamp_secret_file": SECRET,
    }
    if secret:
        journal["stamp_previous_secret_file"] = secret
    for name, (enabled, addr, ndr, attr, dfmt) in zip(
        ("inbound", "outbound", "internal"), dirs, strict=True
    ):
        journal[name] = {
            "enabled": enabled,
            "address": addr,
            "ndr_address": ndr,
            "recipient_attribute": attr,
            "format": dfmt,
        }
    return load_config_dict(
        {
            "organization": {
                "accepted_domains": [ACCEPTED, *(["bücher.example"] if idn else [])],
                "trusted_networks": ["10.0.0.0/8", "2001:db8::/32"],
                "include_subdomains": subdomains,
            },
            "journal": journal,
            "directory": {"backend": "file", "file": {"path": "unused.toml"}},
        }
    )


configs = config_spec.map(build_config)


# -- envelopes ----------------------------------------------------------------------------------


def some_address(config: Config) -> st.SearchStrategy[str]:
    protected = sorted(config.journal.protected_addresses())
    return st.one_of(
        address(st.sampled_from(INTERNAL_DOMAINS)),
        address(st.sampled_from(INTERNAL_DOMAINS)),
        address(st.sampled_from(EXTERNAL_DOMAINS)),
        st.sampled_from(protected).flatmap(case_variant),  # a journal or NDR address
        garbage_address(),
    )


@st.composite
def events(draw: st.DrawFn, config: Config) -> dict[str, Any]:
    addr = some_address(config)
    recipients = draw(st.lists(addr, min_size=1, max_size=6))
    if recipients and draw(st.booleans()):  # the same mailbox twice, in another case
        recipients.append(draw(case_variant(draw(st.sampled_from(recipients)))))
    mail_from = draw(st.one_of(st.just(""), addr))
    header_addrs = st.lists(st.sampled_from(recipients or ["x@y.example"]), max_size=3).map(
        ", ".join
    )
    to = draw(st.one_of(st.none(), header_addrs, hostile_text(3)))
    cc = draw(st.one_of(st.none(), header_addrs, hostile_text(3)))
    destination = draw(st.sampled_from(recipients))
    stamp = draw(
        st.one_of(
            st.none(),
            st.sampled_from([good_stamp(destination), *forged_stamps(destination)]),
            hostile_text(3),
        )
    )
    return {
        "event_id": draw(st.sampled_from(["01J0EVENT", "01J0OTHER"])),
        "received_at": RECEIVED,
        "listener_role": draw(st.sampled_from(["internet", "submission", "relay", "bogus"])),
        "client": {
            "ip": draw(
                st.sampled_from(
                    ["10.1.2.3", "203.0.113.5", "::ffff:10.0.0.1", "2001:db8::1", "junk", ""]
                )
            ),
            "port": 40000,
            "helo": "client.test",
            "proxied_by": None,
        },
        "auth_user": draw(st.sampled_from([None, "", "alice", "alice@corp.example"])),
        "mail_from": mail_from,
        "recipients": [{"address": r} for r in recipients],
        "headers": {
            "message_id": "<id@ext.example>",
            "subject": draw(hostile_text(3)),
            "to": to,
            "cc": cc,
            "journal_stamp": stamp,
        },
        "raw": RAW,
    }


def attribute_values() -> st.SearchStrategy[list[str]]:
    value = st.one_of(
        address(st.sampled_from(INTERNAL_DOMAINS)),
        address(st.sampled_from(EXTERNAL_DOMAINS)),
        st.sampled_from(JOURNALS + NDRS).flatmap(case_variant),
        st.sampled_from(["", "  ", " sup@corp.example "]),
        garbage_address(),
    )
    return st.lists(value, max_size=3)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[Config, dict[str, Any], dict[tuple[str, str], list[str]]]:
    """A configuration, an event, and a directory answer for every lookup the event needs."""
    config = draw(configs)
    event = draw(events(config))
    plan = Decider(config, config.journal.stamp_key()).plan(event)
    answers = {lookup_key(a, o): draw(attribute_values()) for a, o in plan.lookups}
    return config, event, answers


# -- the rules, written out independently --------------------------------------------------------


def _cfg(config: Config, d: Direction) -> Any:
    return config.journal.direction(d.value.lower())


def is_trusted(event: Mapping[str, Any], config: Config) -> bool:
    return (
        bool(event["auth_user"])
        or event["listener_role"] == "relay"
        or config.organization.is_trusted_ip(event["client"]["ip"])
    )


def expected_direction(event: Mapping[str, Any], config: Config, rcpt: str) -> Direction | None:
    """The direction rule agreed for issue 13: from the submitter's trust, not the MAIL FROM,
    for external recipients; by the sender for internal ones (a null sender proves nothing)."""
    org = config.organization
    if not org.is_internal_address(rcpt):
        return Direction.OUTBOUND  # trusted: leaves through us; untrusted: fail safe
    if is_trusted(event, config) and org.is_internal_address(event["mail_from"]):
        return Direction.INTERNAL
    return Direction.INBOUND


def submitter(event: Mapping[str, Any], config: Config) -> str | None:
    """Whose per-sender attribute is read: an internal login, else an internal MAIL FROM."""
    org = config.organization
    for who in (event["auth_user"] or "", event["mail_from"]):
        if org.is_internal_address(who):
            return str(who)
    return None


def stamp_destination(event: Mapping[str, Any], config: Config) -> str | None:
    """The recipient a stamp exempts: only a stamp made by us (our key) for this very message
    and not expired, and only its own destination."""
    stamp = event["headers"]["journal_stamp"]
    if event["raw"] != RAW:
        return None
    for r in event["recipients"]:
        # a stamp naming no destination (an empty address) exempts nobody
        if r["address"] and stamp == good_stamp(r["address"]):
            return str(r["address"])
    return None


Group = tuple[set[str], set[Direction], set[JournalSource]]


def envelope_recipients(event: Mapping[str, Any], config: Config) -> list[str]:
    """The envelope recipients, deduplicated by key (first spelling), journal and NDR
    addresses and the one a valid stamp names removed."""
    protected = set(config.journal.protected_addresses())
    exempt = stamp_destination(event, config)
    if exempt is not None:
        protected.add(key(exempt))
    rcpts: list[str] = []
    seen: set[str] = set()
    for r in event["recipients"]:
        if key(r["address"]) not in seen:
            seen.add(key(r["address"]))
            if key(r["address"]) not in protected:
                rcpts.append(r["address"])
    return rcpts


def expected_copies(
    event: Mapping[str, Any], config: Config, answers: Mapping[tuple[str, str], list[str]]
) -> tuple[dict[tuple[str, str], Group], set[tuple[str, str, Direction]]]:
    """(journal key, NDR key) -> (covered recipient keys, directions, sources), and the invalid
    attribute values (owner key, value, direction)."""
    rcpts = envelope_recipients(event, config)
    sender = submitter(event, config)
    dirs = {key(a): expected_direction(event, config, a) for a in rcpts}
    groups: dict[tuple[str, str], Group] = {}
    invalid: set[tuple[str, str, Direction]] = set()

    def owe(journal: str, d: Direction, source: JournalSource, covered: list[str]) -> None:
        g = groups.setdefault(
            (key(journal), key(_cfg(config, d).ndr_address)), (set(), set(), set())
        )
        g[0].update(key(a) for a in covered)
        g[1].add(d)
        g[2].add(source)

    for d in DIRECTIONS:
        dcfg = _cfg(config, d)
        members = [a for a in rcpts if dirs[key(a)] is d]
        if not (dcfg.active and members):
            continue
        if dcfg.address:
            owe(dcfg.address, d, JournalSource.GLOBAL, members)
        if not dcfg.recipient_attribute:
            continue
        # inbound: each recipient's attribute covers that recipient; outbound: the internal
        # submitter's covers every recipient of the direction; internal: both
        owners: list[tuple[str, list[str]]] = []
        if d in (Direction.INBOUND, Direction.INTERNAL):
            owners += [(a, [a]) for a in members]
        if d in (Direction.OUTBOUND, Direction.INTERNAL) and sender:
            owners.append((sender, members))
        for owner, covered in owners:
            for value in answers[lookup_key(dcfg.recipient_attribute, owner)]:
                value = value.strip()
                if not value:
                    continue
                if is_valid_mailbox(value):
                    owe(validate_mailbox(value), d, JournalSource.RECIPIENT, covered)
                else:
                    invalid.add((key(owner), value, d))
    return groups, invalid


def run(config: Config, event: Mapping[str, Any], answers: Any) -> Decision:
    decider = Decider(config, config.journal.stamp_key())
    return decider.decide(decider.plan(event), answers)


# -- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(scenario())
def test_the_plan_is_exactly_what_the_rules_owe(scn: Any) -> None:
    config, event, answers = scn
    decision = run(config, event, answers)
    protected = config.journal.protected_addresses()
    rcpts = envelope_recipients(event, config)

    assert decision.directions == tuple((a, expected_direction(event, config, a)) for a in rcpts)
    # journal and NDR addresses (and the destination of a valid stamp) among the recipients
    # are reported, never journaled
    exempt = stamp_destination(event, config)
    assert {key(a) for a in decision.protected_recipients} == {
        key(r["address"])
        for r in event["recipients"]
        if key(r["address"]) in protected or (exempt and key(r["address"]) == key(exempt))
    }

    if not rcpts:
        assert decision.copies == ()
        if exempt is not None:
            own_ndr = event["mail_from"] == ""
            assert decision.skip_reason == (SKIP_OWN_NDR if own_ndr else SKIP_STAMPED)
        else:
            assert decision.skip_reason == SKIP_JOURNAL_RECIPIENTS_ONLY
        return

    groups, invalid = expected_copies(event, config, answers)
    got = {
        (key(c.journal_address), key(c.ndr_address)): (
            {key(r.address) for r in c.recipients},
            set(c.directions),
            set(c.sources),
        )
        for c in decision.copies
    }
    assert len(got) == len(decision.copies)  # one copy per (journal address, NDR address)
    assert got == groups
    assert {(key(v.address), v.value, v.direction) for v in decision.invalid_values} == invalid
    if not groups:
        journaled = any(d is not None and _cfg(config, d).active for _, d in decision.directions)
        assert decision.skip_reason == (
            SKIP_NO_JOURNAL_ADDRESS if journaled else SKIP_NOT_JOURNALED
        )
    else:
        assert decision.skip_reason is None


@SETTINGS
@given(scenario())
def test_every_copy_is_safe_to_send(scn: Any) -> None:
    """No copy to an address that is neither configured nor a valid directory value, none to a
    recipient outside the envelope, each NDR address that of its directions."""
    config, event, answers = scn
    decision = run(config, event, answers)
    envelope = {key(r["address"]) for r in event["recipients"]}
    protected = config.journal.protected_addresses()
    valid_values = {
        key(validate_mailbox(v))
        for values in answers.values()
        for v in values
        if is_valid_mailbox(v.strip())
    }
    for c in decision.copies:
        assert is_valid_mailbox(c.journal_address)
        configured = {key(_cfg(config, d).address) for d in c.directions if _cfg(config, d).address}
        assert key(c.journal_address) in configured | valid_values
        if JournalSource.RECIPIENT not in c.sources:
            assert key(c.journal_address) in configured
        assert {key(_cfg(config, d).ndr_address) for d in c.directions} == {key(c.ndr_address)}
        assert c.recipients, "a copy covers at least one recipient"
        keys = [key(r.address) for r in c.recipients]
        assert len(keys) == len(set(keys))
        assert set(keys) <= envelope - protected
        expect_fmt = (
            ReportFormat.COPY
            if all(config.journal.format_for(d.value.lower()) == "copy" for d in c.directions)
            else ReportFormat.REPORT
        )
        assert c.format == expect_fmt
        # only our own submitter (trusted, internal or null sender) knows whom it Bcc'd; was:
        # Bcc only on outbound/internal copies and Recipient only on inbound ones, which the
        # old rule implied (an untrusted or external-sender message had no outbound direction)
        sender = event["mail_from"]
        ours = is_trusted(event, config) and (
            sender == "" or config.organization.is_internal_address(sender)
        )
        for r in c.recipients:
            if r.type is RecipientType.BCC:
                assert ours
            if r.type is RecipientType.RECIPIENT:
                assert not ours


@SETTINGS
@given(scenario())
def test_copy_ids_are_deterministic_and_distinct(scn: Any) -> None:
    config, event, answers = scn
    first = run(config, event, answers)
    again = run(config, copy_module.deepcopy(event), copy_module.deepcopy(answers))
    assert again == first  # a re-run after a crash, or the audit, reproduces the plan
    ids = [c.copy_id for c in first.copies]
    assert len(ids) == len(set(ids))
    for c in first.copies:
        split = sum(key(o.journal_address) == key(c.journal_address) for o in first.copies) > 1
        assert c.copy_id == copy_id_for(event["event_id"], c.journal_address, c.ndr_address, split)
        assert c.copy_id.startswith(make_copy_id(event["event_id"], c.journal_address))
    # another message never shares a copy id
    other = dict(event, event_id=event["event_id"] + "X")
    assert not set(ids) & {c.copy_id for c in run(config, other, answers).copies}


@SETTINGS
@given(scenario(), st.data())
def test_a_missing_directory_answer_raises(scn: Any, data: st.DataObject) -> None:
    """Never a silent skip: without the answer a per-recipient copy may be owed."""
    config, event, answers = scn
    if not answers:
        return
    missing = data.draw(st.sampled_from(sorted(answers)))
    partial = {k: v for k, v in answers.items() if k != missing}
    with pytest.raises(MissingAnswer):
        run(config, event, partial)


@SETTINGS
@given(scenario(), arbitrary_message())
def test_our_own_reports_and_ndrs_are_never_journaled_again(scn: Any, original: bytes) -> None:
    """Loop guard end to end: each report the plan produces, and the NDR about it, read back
    by the ingest header reader as a new message to the address it was made for, is skipped
    (stamped / own NDR); the same message to anyone else is journaled for that recipient."""
    config, event, answers = scn
    # a stamped scenario's stamp is bound to its body: another body voids it, and the answers
    # drawn for the stamped plan would no longer cover the lookups
    assume(not (event.get("headers") or {}).get("journal_stamp"))
    event = dict(event, raw=original)
    decision = run(config, event, answers)
    key_ = config.journal.stamp_key()
    for c in decision.copies:
        record = journal_copy_record(event, c)
        sent = build_message(record, config)
        ndr = build_ndr(
            record,
            sent,
            Failure("550 5.1.1 no such user", True, False, 1, 0),
            config,
            now_ms=RECEIVED_MS + 1000,
        )
        # back at ingest from anywhere: the stamp, not the client, proves it is ours
        client_ip = "203.0.113.5"
        cases = [
            (c.ndr_address, c.journal_address, sent, SKIP_STAMPED),
            ("", c.ndr_address, ndr, SKIP_OWN_NDR),
        ]
        for mail_from, rcpt, raw, reason in cases:
            if raw is original:
                continue  # format "copy" sends the original itself: no stamp to find
            again = {
                **event,
                "event_id": "01J0AGAIN",
                "client": dict(event["client"], ip=client_ip),
                "auth_user": None,
                "listener_role": "internet",
                "received_at": datetime(2025, 1, 2, 3, 5, tzinfo=UTC),
                "mail_from": mail_from,
                "recipients": [{"address": rcpt}],
                "headers": selected_headers(raw),
                "raw": raw,
            }
            d = Decider(config, key_)
            plan = d.plan(again)
            assert plan.lookups == ()
            assert d.decide(plan, {}).skip_reason == reason
            # was: also skipped when a supervisor who is not protected got it too; now the
            # stamp exempts its destination only
            other = "someone-else@example.net"
            if key(other) in config.journal.protected_addresses() | {key(rcpt)}:
                continue
            forwarded = {**again, "recipients": [{"address": rcpt}, {"address": other}]}
            plan = d.plan(forwarded)
            assert plan.facts.recipients == (other,)
            assert plan.facts.directions == ((other, Direction.OUTBOUND),)
