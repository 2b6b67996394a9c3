"""The whole decide-and-build path from raw message bytes, with its invariants (issue 13).

Shared by the coverage-guided fuzzer (``tests/fuzz/fuzz_pipeline.py``, ``make fuzz``), the replay
of its committed corpus (``tests/test_fuzz_corpus.py``) and the hypothesis property tests
(``tests/test_properties_pipeline.py``). :func:`check` raises :class:`Violation` (or whatever
raised inside) for any input that breaks the promise; it returns quietly for bytes ingest would
refuse.

The path, with ingest's and the stages' own functions:

1. ingest: the bytes as a client sends them in DATA (dot-stuffed, terminated) through ingest's
   :class:`~ingest.datapath.DataParser` with the default limits (bare newlines normalised, so
   more inputs get through); what it stores is the original. Its selected header fields are
   ingest's :func:`~ingest.headers.selected_headers`; the ``MessageReceived`` is encoded and
   decoded with the schema codec, as it crosses Kafka;
2. the journal worker's :class:`~journal_worker.decide.Decider` for a few envelopes (untrusted
   Internet mail to internal recipients; a trusted internal sender to external and internal
   recipients), with envelope recipients taken from the header too so the To/Cc parsing is
   exercised, and an in-memory directory answer for every lookup; its fallback when it raises,
   as the worker does -- but here a fallback is a finding;
3. every copy as delivery builds it: the report, the copy, an NDR about each, a DSN to the
   sender; no builder may fall back either.

Invariants: the decision holds the global copy of every direction the envelope has (re-derived
by the audit's independent rule, :func:`audit.reconcile.required_globals`); every copy encodes
as a ``JournalCopy``; the report's ``message/rfc822`` part, the copy, and the NDR's returned
report carry the original byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prometheus_client import REGISTRY

from audit.reconcile import required_globals
from delivery.ndr import build_ndr
from delivery.report import build_message, build_report
from ingest.datapath import DataParser, DataStatus
from ingest.headers import selected_headers
from journal_worker.decide import Decider, journal_copy_record, lookup_key
from mailjournal.addresses import AddressError, key, validate_mailbox
from mailjournal.config import Config, load_config_dict
from mailjournal.dsn import Failure
from relay.sender_dsn import RecipientFailure, build_sender_dsn
from schemas import JOURNAL_COPY, MESSAGE_RECEIVED, decode, encode
from tests.fixtures.config import STAMP_KEY_FILE

CONFIG: Config = load_config_dict(
    {
        "organization": {"accepted_domains": ["corp.example"], "trusted_networks": ["10.0.0.0/8"]},
        "journal": {
            "sender": "mailjournal@corp.example",
            "stamp_secret_file": str(STAMP_KEY_FILE),
            "inbound": {
                "address": "journal-in@corp.example",
                "ndr_address": "journal-ndr-in@corp.example",
                "recipient_attribute": "journalAddress",
            },
            "outbound": {
                "address": "journal-out@corp.example",
                "ndr_address": "journal-ndr-out@corp.example",
                "recipient_attribute": "journalAddress",
                "format": "copy",
            },
            "internal": {
                "enabled": True,
                "address": "journal-int@corp.example",
                "ndr_address": "journal-ndr-int@corp.example",
            },
        },
        "directory": {"backend": "file", "file": {"path": "unused.toml"}},
    }
)
DECIDER = Decider(CONFIG, CONFIG.journal.stamp_key())
NOW_MS = 1_700_000_000_000
MAX_HEADER_RECIPIENTS = 40

UNTRUSTED = {"ip": "203.0.113.5", "port": 40000, "helo": "mx.ext.example", "proxied_by": None}
TRUSTED = {"ip": "10.1.2.3", "port": 40000, "helo": "client.corp.example", "proxied_by": None}
# (client, MAIL FROM, fixed envelope recipients, header recipients kept: internal only or all)
ENVELOPES = [
    (UNTRUSTED, "partner@ext.example", ["alice@corp.example"], "internal"),
    (TRUSTED, "alice@corp.example", ["customer@ext.example", "bob@corp.example"], "all"),
]
_ADDRESS_LIKE = re.compile(r"[^\s<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9.-]{1,64}")


class Violation(AssertionError):
    """An invariant of the journaling promise does not hold for this input."""


def ingest_accepts(data: bytes) -> bytes | None:
    """What ingest stores when a client sends ``data`` in DATA, or None if it refuses it."""
    body = data if data.endswith(b"\r\n") or not data else data + b"\r\n"
    wire = (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"
    ingest = CONFIG.ingest
    parser = DataParser(
        max_size=ingest.max_message_size,
        max_line_length=ingest.max_line_length,
        bare_newline="normalize",
    )
    if parser.feed(wire) is None or parser.status is not DataStatus.OK:
        return None
    return parser.message


def _header_recipients(headers: dict[str, str | None], which: str) -> list[str]:
    found: list[str] = []
    for name in ("to", "cc"):
        for candidate in _ADDRESS_LIKE.findall(headers.get(name) or ""):
            try:
                address = validate_mailbox(candidate)
            except AddressError:
                continue
            if which == "all" or CONFIG.organization.is_internal_address(address):
                found.append(address)
            if len(found) >= MAX_HEADER_RECIPIENTS:
                return found
    return found


def _answers(lookups: tuple[tuple[str, str], ...]) -> dict[Any, list[str]]:
    """A deterministic in-memory directory: some people have a supervisor, some a bad value."""
    out: dict[Any, list[str]] = {}
    for attribute, address in lookups:
        h = hashlib.sha256(key(address).encode()).digest()[0] % 4
        values = [[], ["sup@corp.example"], ["not an address", "legal@corp.example"], [""]][h]
        out[lookup_key(attribute, address)] = values
    return out


def _fallbacks() -> float:
    total = 0.0
    for what in ("field", "report", "ndr", "sender_dsn"):
        total += (
            REGISTRY.get_sample_value("mailjournal_delivery_render_fallbacks_total", {"what": what})
            or 0.0
        )
    return total


def make_event(raw: bytes, client: dict[str, Any], sender: str, rcpts: list[str]) -> dict[str, Any]:
    record = {
        "event_id": "01JFUZZ" + hashlib.sha256(raw).hexdigest()[:19].upper(),
        "received_at": NOW_MS,
        "ingest_host": "fuzz",
        "listener": "mx",
        "listener_role": "internet",
        "client": client,
        "tls": None,
        "auth_user": None,
        "mail_from": sender,
        "mail_params": {
            "size": None,
            "body": None,
            "smtputf8": False,
            "ret": None,
            "envid": None,
            "other": {},
        },
        "recipients": [{"address": r, "notify": None, "orcpt": None, "other": {}} for r in rcpts],
        "headers": selected_headers(raw),
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "raw": raw,
    }
    # as ingest publishes it and the worker reads it
    return decode(encode(MESSAGE_RECEIVED, record), MESSAGE_RECEIVED)


def attached(data: bytes, content_type: bytes) -> bytes:
    """The body of the report's part of ``content_type`` (its last part), exactly."""
    head = data[: data.index(b"\r\n\r\n")]
    boundary = re.search(rb'boundary="([^"]+)"', head)
    if boundary is None:
        raise Violation("no boundary in the report's header")
    delimiter = b"--" + boundary.group(1)
    start = data.index(delimiter + b"\r\nContent-Type: " + content_type + b"\r\n")
    start = data.index(b"\r\n\r\n", start) + 4
    end = data.rindex(b"\r\n" + delimiter + b"--\r\n")
    return data[start:end]


def check(data: bytes, *, every_envelope: bool = True) -> bool:
    """Run the whole path on ``data``; False when ingest refuses it, True when every invariant
    held; raises otherwise. Without ``every_envelope`` (the fuzzer: more executions a second)
    one envelope, chosen by the input's length."""
    raw = ingest_accepts(data)
    if raw is None:
        return False
    envelopes = ENVELOPES if every_envelope else [ENVELOPES[len(data) % len(ENVELOPES)]]
    for client, sender, fixed, which in envelopes:
        headers = selected_headers(raw)
        rcpts = list(dict.fromkeys(fixed + _header_recipients(headers, which)))
        check_event(make_event(raw, client, sender, rcpts))
    return True


def check_event(event: dict[str, Any]) -> None:
    raw: bytes = event["raw"]
    plan = DECIDER.plan(event)  # any exception here is a finding (the worker would fall back)
    decision = DECIDER.decide(plan, _answers(plan.lookups))
    if decision.fallback:
        raise Violation(f"decided by the fallback: {decision.fallback}")
    for direction, address in required_globals(event, CONFIG):
        if not any(
            key(c.journal_address) == address and direction in {str(d) for d in c.directions}
            for c in decision.copies
        ):
            raise Violation(f"no {direction} global copy to {address}: {decision}")
    before = _fallbacks()
    for planned in decision.copies:
        copy = decode(encode(JOURNAL_COPY, journal_copy_record(event, planned)), JOURNAL_COPY)
        report = build_report(copy, CONFIG)
        if attached(report, b"message/rfc822") != raw:
            raise Violation("the report does not carry the original byte for byte")
        sent = build_message(copy, CONFIG)
        if copy["format"] == "COPY" and sent != raw:
            raise Violation("the copy is not the original")
        if build_message({**copy, "format": "COPY"}, CONFIG) != raw:
            raise Violation("the copy format is not the original")
        failure = Failure(
            "550 5.1.1 " + str(copy.get("subject") or "")[:200], True, False, 3, NOW_MS
        )
        ndr = build_ndr(copy, sent, failure, CONFIG, now_ms=NOW_MS)
        if len(sent) <= CONFIG.delivery.ndr_attach_max_bytes and sent not in ndr:
            raise Violation("the NDR does not return the copy")
        relay = {
            **copy,
            "kind": "RELAY",
            "relay": {"mail_params": {}},
            "original_sender": "a@b.example",
        }
        dsn = build_sender_dsn(
            relay,
            [RecipientFailure({"address": r.address}, failure) for r in planned.recipients[:3]],
            "failed",
            CONFIG,
            now_ms=NOW_MS,
            dsn_id=f"{copy['copy_id']}.dsn",
        )
        if b"report-type=delivery-status" not in dsn:
            raise Violation("the DSN is not a delivery report")
    if _fallbacks() != before:
        raise Violation("a builder fell back (a field or message could not be rendered)")
