"""The journal decision table: pure functions, no servers."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import pytest

from journal_worker.decide import (
    SKIP_JOURNAL_RECIPIENTS_ONLY,
    SKIP_NO_JOURNAL_ADDRESS,
    SKIP_NOT_JOURNALED,
    SKIP_OWN_NDR,
    SKIP_STAMPED,
    MissingAnswer,
    decide,
    journal_copy_record,
    lookup_key,
    needed_lookups,
    recipient_types,
)
from mailjournal.config import Config
from schemas import encode, make_copy_id
from tests.fixtures.config import (
    PREVIOUS_STAMP_KEY,
    PREVIOUS_STAMP_KEY_FILE,
    STAMP_KEY,
    make_config,
)
from tests.fixtures.journal import INSIDE_IP, OUTSIDE_IP, make_event
from tests.fixtures.stamp import stamped, valid_stamp, with_stamp

ATTR = "extensionAttribute10"
J_IN, N_IN = "journal-in@corp.example", "journal-ndr-in@corp.example"
J_OUT, N_OUT = "journal-out@corp.example", "journal-ndr-out@corp.example"
J_INT, N_INT = "journal-int@corp.example", "journal-ndr-int@corp.example"
SUP = "supervisor@corp.example"
KEY = STAMP_KEY
FILE_DIR = {"directory": {"backend": "file", "file": {"path": "dir.toml"}}}


def cfg(**over: Any) -> Config:
    return make_config(over)


INTERNAL_ON = {"internal": {"address": J_INT, "ndr_address": N_INT}}
# a journal report delivery sent to a supervisor's per-recipient journal address, coming back
# through ingest from the smart host (a trusted client)
REPORT_TO_SUP = make_event("journal-ndr-in@corp.example", [SUP], client_ip=INSIDE_IP, to=SUP)
# the format of version 1: a MAC over the copy id only, valid forever
V1_STAMP = "v1; copy=c1; mac=" + hmac.new(STAMP_KEY, b"c1", hashlib.sha256).hexdigest()[:32]
PER_RCPT_IN = {"inbound": {"recipient_attribute": ATTR}}
PER_RCPT_ONLY_IN = {"inbound": {"address": None, "recipient_attribute": ATTR}}
PER_RCPT_OUT = {"outbound": {"recipient_attribute": ATTR}}


@dataclass
class Case:
    name: str
    event: dict[str, Any]
    config: Config = field(default_factory=make_config)
    answers: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # expected: {journal address: (ndr, directions, sources, [(rcpt, type)])}, or a skip reason
    copies: dict[str, tuple[str, set[str], set[str], list[tuple[str, str]]]] = field(
        default_factory=dict
    )
    skip: str | None = None


def A(attr_owner: str, *values: str) -> dict[tuple[str, str], list[str]]:
    return {lookup_key(ATTR, attr_owner): list(values)}


CASES = [
    Case(
        "inbound one recipient",
        make_event("bob@example.net", ["alice@corp.example"]),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "inbound several recipients, one copy listing all",
        make_event(
            "bob@example.net",
            ["alice@corp.example", "carol@corp.example", "dave@corp.example"],
            to="Alice <ALICE@corp.example>",
            cc="carol@corp.example",
        ),
        copies={
            J_IN: (
                N_IN,
                {"INBOUND"},
                {"GLOBAL"},
                [
                    ("alice@corp.example", "TO"),
                    ("carol@corp.example", "CC"),
                    ("dave@corp.example", "RECIPIENT"),  # inbound: not asserted to be a Bcc
                ],
            )
        },
    ),
    Case(
        "outbound from a trusted network",
        make_event("alice@corp.example", ["bob@example.net"], client_ip=INSIDE_IP),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("bob@example.net", "TO")])},
    ),
    Case(
        "outbound from an authenticated client on the Internet",
        make_event("alice@corp.example", ["bob@example.net"], auth_user="alice"),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("bob@example.net", "TO")])},
    ),
    Case(
        "outbound through a relay listener",
        make_event("alice@corp.example", ["bob@example.net"], listener_role="relay"),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("bob@example.net", "TO")])},
    ),
    Case(
        "outbound Bcc detection: envelope recipient in neither header",
        make_event(
            "alice@corp.example",
            ["bob@example.net", "eve@example.org", "ann@example.com"],
            client_ip=INSIDE_IP,
            to='"Bob" <bob@EXAMPLE.net>',
            cc="Ann <ann@example.com>",
        ),
        copies={
            J_OUT: (
                N_OUT,
                {"OUTBOUND"},
                {"GLOBAL"},
                [("bob@example.net", "TO"), ("eve@example.org", "BCC"), ("ann@example.com", "CC")],
            )
        },
    ),
    Case(
        "internal to internal, off by default",
        make_event("alice@corp.example", ["carol@corp.example"], client_ip=INSIDE_IP),
        skip=SKIP_NOT_JOURNALED,
    ),
    Case(
        "internal to internal, on",
        make_event("alice@corp.example", ["carol@corp.example"], client_ip=INSIDE_IP, to=""),
        config=cfg(journal=INTERNAL_ON),
        copies={J_INT: (N_INT, {"INTERNAL"}, {"GLOBAL"}, [("carol@corp.example", "BCC")])},
    ),
    Case(
        "mixed internal/external recipients, outbound, internal off",
        make_event(
            "alice@corp.example",
            ["carol@corp.example", "bob@example.net"],
            client_ip=INSIDE_IP,
        ),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("bob@example.net", "TO")])},
    ),
    Case(
        "mixed internal/external recipients, outbound, internal on",
        make_event(
            "alice@corp.example",
            ["carol@corp.example", "bob@example.net"],
            client_ip=INSIDE_IP,
        ),
        config=cfg(journal=INTERNAL_ON),
        copies={
            J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("bob@example.net", "TO")]),
            J_INT: (N_INT, {"INTERNAL"}, {"GLOBAL"}, [("carol@corp.example", "TO")]),
        },
    ),
    Case(
        # was: only the internal ones journaled (the old rule: no direction for zed)
        "mixed recipients from outside: internal inbound, an external one journaled outbound",
        make_event("bob@example.net", ["alice@corp.example", "zed@example.org"]),
        copies={
            J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")]),
            J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("zed@example.org", "TO")]),
        },
    ),
    Case(
        # was: skipped as "not ours to journal" (the old rule: direction from MAIL FROM)
        "external MAIL FROM to an external recipient from a trusted client is outbound",
        make_event("bob@example.net", ["zed@example.org"], client_ip=INSIDE_IP),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("zed@example.org", "TO")])},
    ),
    Case(
        "external MAIL FROM to an external recipient from an authenticated client is outbound",
        make_event("bob@example.net", ["zed@example.org"], auth_user="alice@corp.example"),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("zed@example.org", "TO")])},
    ),
    Case(
        "external MAIL FROM to an external recipient on a relay listener is outbound",
        make_event("bob@example.net", ["zed@example.org"], listener_role="relay"),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("zed@example.org", "TO")])},
    ),
    Case(
        "untrusted client to an external recipient (refused at RCPT): outbound, fail safe",
        make_event("alice@corp.example", ["zed@example.org"]),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("zed@example.org", "TO")])},
    ),
    Case(
        "a trusted upstream filter relaying Internet mail to an internal recipient is inbound",
        make_event("bob@example.net", ["alice@corp.example"], client_ip=INSIDE_IP),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "null sender from a trusted client to an internal recipient is inbound",
        make_event("", ["alice@corp.example"], client_ip=INSIDE_IP),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "null sender from a trusted client to an internal recipient, internal on: inbound",
        make_event("", ["alice@corp.example"], client_ip=INSIDE_IP),
        config=cfg(journal=INTERNAL_ON),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "spoofed internal sender from the Internet is inbound",
        make_event("ceo@corp.example", ["alice@corp.example"], to="x@example.net"),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "RECIPIENT")])},
    ),
    Case(
        "null sender from outside (a bounce) is inbound",
        make_event("", ["alice@corp.example"]),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "null sender from our own MTA to the outside is outbound",
        make_event("", ["bob@example.net"], client_ip=INSIDE_IP, to=""),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("bob@example.net", "BCC")])},
    ),
    Case(
        "per-recipient only: copies for the recipients that have the attribute",
        make_event("bob@example.net", ["alice@corp.example", "carol@corp.example"]),
        config=cfg(journal=PER_RCPT_ONLY_IN, **FILE_DIR),
        answers={**A("alice@corp.example", SUP), **A("carol@corp.example")},
        copies={SUP: (N_IN, {"INBOUND"}, {"RECIPIENT"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "per-recipient only: nobody has an address",
        make_event("bob@example.net", ["alice@corp.example"]),
        config=cfg(journal=PER_RCPT_ONLY_IN, **FILE_DIR),
        answers=A("alice@corp.example"),
        skip=SKIP_NO_JOURNAL_ADDRESS,
    ),
    Case(
        "per-recipient plus global to the same address: one copy, both sources",
        make_event("bob@example.net", ["alice@corp.example", "carol@corp.example"]),
        config=cfg(journal=PER_RCPT_IN, **FILE_DIR),
        answers={**A("alice@corp.example", "JOURNAL-IN@corp.example"), **A("carol@corp.example")},
        copies={
            J_IN: (
                N_IN,
                {"INBOUND"},
                {"GLOBAL", "RECIPIENT"},
                [("alice@corp.example", "TO"), ("carol@corp.example", "TO")],
            )
        },
    ),
    Case(
        "per-recipient plus global to different addresses: two copies",
        make_event("bob@example.net", ["alice@corp.example", "carol@corp.example"]),
        config=cfg(journal=PER_RCPT_IN, **FILE_DIR),
        answers={
            **A("alice@corp.example", SUP),
            **A("carol@corp.example", SUP, "audit@corp.example"),
        },
        copies={
            J_IN: (
                N_IN,
                {"INBOUND"},
                {"GLOBAL"},
                [("alice@corp.example", "TO"), ("carol@corp.example", "TO")],
            ),
            SUP: (
                N_IN,
                {"INBOUND"},
                {"RECIPIENT"},
                [("alice@corp.example", "TO"), ("carol@corp.example", "TO")],
            ),
            "audit@corp.example": (
                N_IN,
                {"INBOUND"},
                {"RECIPIENT"},
                [("carol@corp.example", "TO")],
            ),
        },
    ),
    Case(
        "outbound per-recipient reads the sender and covers all outbound recipients",
        make_event(
            "alice@corp.example", ["bob@example.net", "zed@example.org"], client_ip=INSIDE_IP
        ),
        config=cfg(
            journal={"outbound": {"address": None, "recipient_attribute": ATTR}}, **FILE_DIR
        ),
        answers=A("alice@corp.example", SUP),
        copies={
            SUP: (
                N_OUT,
                {"OUTBOUND"},
                {"RECIPIENT"},
                [("bob@example.net", "TO"), ("zed@example.org", "TO")],
            )
        },
    ),
    Case(
        "same inbound and outbound address: one copy per message",
        make_event("alice@corp.example", ["bob@example.net", "carol@corp.example"], auth_user="a"),
        config=cfg(
            journal={
                "inbound": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
                "outbound": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
                "internal": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
            }
        ),
        copies={
            "journal@corp.example": (
                "ndr@corp.example",
                {"OUTBOUND", "INTERNAL"},
                {"GLOBAL"},
                [("bob@example.net", "TO"), ("carol@corp.example", "TO")],
            )
        },
    ),
    Case(
        "same inbound and outbound address, inbound message",
        make_event("bob@example.net", ["alice@corp.example"]),
        config=cfg(
            journal={
                "inbound": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
                "outbound": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
            }
        ),
        copies={
            "journal@corp.example": (
                "ndr@corp.example",
                {"INBOUND"},
                {"GLOBAL"},
                [("alice@corp.example", "TO")],
            )
        },
    ),
    Case(
        "recipients that are only journal / NDR addresses",
        make_event("bob@example.net", [J_IN, "Journal-NDR-Out@corp.example"]),
        skip=SKIP_JOURNAL_RECIPIENTS_ONLY,
    ),
    Case(
        "a journal address among other recipients is itself never journaled",
        make_event("bob@example.net", ["alice@corp.example", J_OUT]),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "our own journal report arriving at its per-recipient journal address",
        stamped(REPORT_TO_SUP, SUP),
        skip=SKIP_STAMPED,
    ),
    Case(
        "our own NDR arriving at its NDR address: null sender with our stamp",
        stamped(make_event("", [N_IN]), N_IN),
        skip=SKIP_OWN_NDR,
    ),
    Case(
        "a stamp exempts its destination only: the same report to an outsider is journaled",
        stamped(
            make_event(
                "journal-ndr-in@corp.example", [SUP, "x@example.net"], client_ip=INSIDE_IP, to=SUP
            ),
            SUP,
        ),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("x@example.net", "BCC")])},
    ),
    Case(
        "a real report forwarded to an outside recipient (another destination) is journaled",
        stamped(make_event("sup@corp.example", ["x@example.net"], client_ip=INSIDE_IP), SUP),
        copies={J_OUT: (N_OUT, {"OUTBOUND"}, {"GLOBAL"}, [("x@example.net", "TO")])},
    ),
    Case(
        "a stamp lifted onto another message (another body) does not exempt it",
        with_stamp(
            make_event("bob@example.net", [SUP], body=b"another message\r\n"),
            valid_stamp(REPORT_TO_SUP, SUP),
        ),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [(SUP, "TO")])},
    ),
    Case(
        "a forged stamp (wrong key) does not keep mail out of the journal",
        stamped(make_event("bob@example.net", [SUP]), SUP, key=b"k" * 16 + b"other key bytes!"),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [(SUP, "TO")])},
    ),
    Case(
        "a stamp without a MAC is ignored, even from a trusted client",
        with_stamp(make_event("", [SUP], client_ip=INSIDE_IP), f"v2; copy=c1; to={SUP}"),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [(SUP, "TO")])},
    ),
    Case(
        "an old v1 stamp with a MAC under our key is never honoured",
        with_stamp(make_event("", [SUP], client_ip=INSIDE_IP), V1_STAMP),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [(SUP, "TO")])},
    ),
    Case(
        "an expired stamp (older than stamp_max_age_seconds) is not honoured",
        stamped(make_event("", [SUP], client_ip=INSIDE_IP), SUP, age_ms=8 * 86400 * 1000),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [(SUP, "TO")])},
    ),
    Case(
        "a stamp dated far in the future is not honoured",
        stamped(make_event("", [SUP], client_ip=INSIDE_IP), SUP, age_ms=-2 * 3600 * 1000),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [(SUP, "TO")])},
    ),
    Case(
        "a stamp made with the previous key is honoured during its rotation",
        stamped(REPORT_TO_SUP, SUP, key=PREVIOUS_STAMP_KEY),
        config=cfg(journal={"stamp_previous_secret_file": str(PREVIOUS_STAMP_KEY_FILE)}),
        skip=SKIP_STAMPED,
    ),
    Case(
        "a stamp made with a retired key is not honoured",
        stamped(REPORT_TO_SUP, SUP, key=PREVIOUS_STAMP_KEY),
        copies={J_INT: (N_INT, {"INTERNAL"}, {"GLOBAL"}, [(SUP, "TO")])},
        config=cfg(journal=INTERNAL_ON),
    ),
    Case(
        "an invalid attribute value makes no copy; the global copy stays",
        make_event("bob@example.net", ["alice@corp.example"]),
        config=cfg(journal=PER_RCPT_IN, **FILE_DIR),
        answers=A("alice@corp.example", "not an address", " "),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])},
    ),
    Case(
        "a disabled direction is not journaled",
        make_event("bob@example.net", ["alice@corp.example"]),
        config=cfg(journal={"inbound": {"enabled": False}}),
        skip=SKIP_NOT_JOURNALED,
    ),
    Case(
        "duplicate envelope recipients (case) are listed once",
        make_event("bob@example.net", ["alice@corp.example", "ALICE@corp.example"], to=""),
        copies={J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "RECIPIENT")])},
    ),
]


def summarize(decision: Any) -> dict[str, tuple[str, set[str], set[str], list[tuple[str, str]]]]:
    return {
        c.journal_address: (
            c.ndr_address,
            {str(d) for d in c.directions},
            {str(s) for s in c.sources},
            [(r.address, str(r.type)) for r in c.recipients],
        )
        for c in decision.copies
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    key = case.config.journal.stamp_key()
    lookups = needed_lookups(case.event, case.config, key)
    # the table supplies exactly the answers the decision asks for
    assert {lookup_key(a, addr) for a, addr in lookups} == set(case.answers)
    decision = decide(case.event, case.config, case.answers, key)
    assert decision.skip_reason == case.skip
    assert summarize(decision) == case.copies
    # one copy per (journal address, NDR address); ids deterministic and as the schema defines
    assert len({c.copy_id for c in decision.copies}) == len(decision.copies)
    again = decide(case.event, case.config, dict(case.answers), key)
    assert again == decision
    for c in decision.copies:
        assert c.copy_id == make_copy_id(case.event["event_id"], c.journal_address)
        record = journal_copy_record(case.event, c)
        encode("JournalCopy", record)  # schema-valid
        assert record["original"] == case.event["raw"]


def test_invalid_values_are_reported() -> None:
    config = cfg(journal=PER_RCPT_IN, **FILE_DIR)
    event = make_event("bob@example.net", ["alice@corp.example"])
    decision = decide(event, config, A("alice@corp.example", "not an address"), None)
    assert [(v.address, v.value, str(v.direction)) for v in decision.invalid_values] == [
        ("alice@corp.example", "not an address", "INBOUND")
    ]


def test_protected_recipients_are_reported() -> None:
    event = make_event("bob@example.net", ["alice@corp.example", J_IN])
    decision = decide(event, make_config(), {}, None)
    assert decision.protected_recipients == (J_IN,)


def test_same_journal_address_with_two_ndr_addresses_is_two_copies() -> None:
    config = cfg(
        journal={
            "outbound": {"address": "journal@corp.example", "ndr_address": N_OUT},
            "internal": {"address": "journal@corp.example", "ndr_address": N_INT},
        }
    )
    event = make_event(
        "alice@corp.example", ["bob@example.net", "carol@corp.example"], auth_user="a"
    )
    decision = decide(event, config, {}, None)
    assert sorted((c.journal_address, c.ndr_address) for c in decision.copies) == [
        ("journal@corp.example", N_INT),
        ("journal@corp.example", N_OUT),
    ]
    ids = [c.copy_id for c in decision.copies]
    assert len(set(ids)) == 2
    assert ids == [c.copy_id for c in decide(event, config, {}, None).copies]


def test_internal_per_recipient_reads_recipient_and_sender() -> None:
    config = cfg(
        journal={"internal": {"recipient_attribute": ATTR, "ndr_address": N_INT}}, **FILE_DIR
    )
    event = make_event(
        "alice@corp.example", ["carol@corp.example", "dave@corp.example"], client_ip=INSIDE_IP
    )
    lookups = needed_lookups(event, config, None)
    assert lookups == [
        (ATTR, "carol@corp.example"),
        (ATTR, "dave@corp.example"),
        (ATTR, "alice@corp.example"),
    ]
    answers = {
        **A("carol@corp.example", "carols-boss@corp.example"),
        **A("dave@corp.example"),
        **A("alice@corp.example", SUP),
    }
    got = summarize(decide(event, config, answers, None))
    assert got == {
        "carols-boss@corp.example": (
            N_INT,
            {"INTERNAL"},
            {"RECIPIENT"},
            [("carol@corp.example", "TO")],
        ),
        SUP: (
            N_INT,
            {"INTERNAL"},
            {"RECIPIENT"},
            [("carol@corp.example", "TO"), ("dave@corp.example", "TO")],
        ),
    }


def test_missing_directory_answer_is_an_error_not_a_skip() -> None:
    config = cfg(journal=PER_RCPT_IN, **FILE_DIR)
    event = make_event("bob@example.net", ["alice@corp.example"])
    with pytest.raises(MissingAnswer):
        decide(event, config, {}, None)


def test_no_lookups_for_skipped_mail() -> None:
    config = cfg(journal=PER_RCPT_IN, **FILE_DIR)
    own = stamped(make_event("", [SUP]), SUP)
    assert needed_lookups(own, config, KEY) == []
    only_journal = make_event("bob@example.net", [J_IN])
    assert needed_lookups(only_journal, config, KEY) == []


def test_without_a_key_no_stamp_is_honoured() -> None:
    own = stamped(REPORT_TO_SUP, SUP)
    assert decide(own, make_config(), {}, KEY).skip_reason == SKIP_STAMPED
    for keys in (None, ()):
        decision = decide(own, cfg(journal=INTERNAL_ON), {}, keys)
        assert [c.journal_address for c in decision.copies] == [J_INT]


def test_outbound_per_sender_lookup_uses_the_authenticated_identity() -> None:
    config = cfg(journal=PER_RCPT_OUT, **FILE_DIR)
    spoofed = make_event("ceo@corp.example", ["bob@example.net"], auth_user="alice@corp.example")
    assert needed_lookups(spoofed, config, KEY) == [(ATTR, "alice@corp.example")]
    got = summarize(decide(spoofed, config, A("alice@corp.example", SUP), KEY))
    assert got[SUP] == (N_OUT, {"OUTBOUND"}, {"RECIPIENT"}, [("bob@example.net", "TO")])
    # a login that is not an internal address: the MAIL FROM, as before
    plain = make_event("ceo@corp.example", ["bob@example.net"], auth_user="alice")
    assert needed_lookups(plain, config, KEY) == [(ATTR, "ceo@corp.example")]
    # an external or null MAIL FROM without such a login: no per-sender lookup, global copy
    for sender in ("bob@example.org", ""):
        event = make_event(sender, ["bob@example.net"], client_ip=INSIDE_IP)
        assert needed_lookups(event, config, KEY) == []
        assert summarize(decide(event, config, {}, KEY))[J_OUT][1] == {"OUTBOUND"}


def test_archive_addresses_are_protected() -> None:
    config = cfg(journal={"archive_addresses": ["Vault-1@corp.example"]})
    event = make_event("bob@example.net", ["vault-1@corp.example", "alice@corp.example"])
    decision = decide(event, config, {}, KEY)
    assert decision.protected_recipients == ("vault-1@corp.example",)
    assert summarize(decision) == {
        J_IN: (N_IN, {"INBOUND"}, {"GLOBAL"}, [("alice@corp.example", "TO")])
    }


@pytest.mark.parametrize(
    ("fmt_in", "fmt_out", "expected"),
    [("copy", "copy", "COPY"), ("report", "copy", "REPORT"), (None, None, "REPORT")],
)
def test_format_per_direction(fmt_in: str | None, fmt_out: str | None, expected: str) -> None:
    journal: dict[str, Any] = {
        "outbound": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
        "internal": {"address": "journal@corp.example", "ndr_address": "ndr@corp.example"},
    }
    if fmt_in:
        journal["internal"]["format"] = fmt_in
    if fmt_out:
        journal["outbound"]["format"] = fmt_out
    event = make_event(
        "alice@corp.example", ["bob@example.net", "carol@corp.example"], auth_user="a"
    )
    (copy,) = decide(event, cfg(journal=journal), {}, None).copies
    assert str(copy.format) == expected


def test_recipient_types_parse_display_names_and_groups() -> None:
    event = make_event(
        "alice@corp.example",
        ["a@x.example", "b@x.example", "c@x.example"],
        to='"Smith, A" <A@X.example>, undisclosed-recipients:;',
        cc="team: b@x.example;",
    )
    types = recipient_types(event, ["a@x.example", "b@x.example", "c@x.example"], True)
    assert {k: str(v) for k, v in types.items()} == {
        "a@x.example": "TO",
        "b@x.example": "CC",
        "c@x.example": "BCC",
    }


def test_trusted_classification_uses_config_networks() -> None:
    # was: internal sender to an external recipient (untrusted: no direction); the new rule
    # journals that either way, so trust shows on an internal recipient: inbound vs internal
    event = make_event("alice@corp.example", ["carol@corp.example"], client_ip=OUTSIDE_IP)
    assert summarize(decide(event, make_config(), {}, None)).keys() == {J_IN}
    config = cfg(organization={"trusted_networks": ["203.0.113.0/24"]})
    assert decide(event, config, {}, None).skip_reason == SKIP_NOT_JOURNALED
