"""Property tests of the wire form (mailjournal/smtp/wire.py): a message sent as unjoined parts,
each scanned once, puts on the wire exactly what the single-buffer functions make of the joined
message, for any bytes and any way of cutting them into parts -- the cuts included that split a
CRLF, fall before a dot or between a dot line's CRLF and its dot.

The facts are checked against an oracle that splits the message into lines (no counting tricks,
no block probes): what a reader of RFC 5321/5322 would do by hand.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from delivery.report import build_report, original_body_facts, outgoing_message, report_parts
from journal_worker.decide import PlannedCopy, journal_copy_record
from mailjournal.smtp.client import has_utf8_header_fields
from mailjournal.smtp.wire import (
    BodyFacts,
    Outgoing,
    Part,
    contains,
    dot_stuffed,
    wire_bytes,
)
from mailjournal.trace import traced
from relay.routing import relay_copies
from schemas import JOURNAL_COPY, Direction, JournalSource, ReportFormat, decode, encode
from tests.fixtures.config import make_config
from tests.fixtures.delivery import make_copy
from tests.fixtures.journal import make_event
from tests.strategies import arbitrary_message

SETTINGS = settings(max_examples=400, deadline=None)

# bytes where line endings, dots, long lines and 8-bit octets are likely
WIRE_ALPHABET = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b".", b"x", b"\x00", b"\xc3\xa4", b"a" * 500]
)
WIRE_BYTES = st.lists(WIRE_ALPHABET, max_size=40).map(b"".join)


def oracle_facts(data: bytes) -> BodyFacts:
    """The facts by hand: split at every line ending (CRLF, then a lone CR or LF)."""
    bare = re.search(rb"\r(?!\n)|(?<!\r)\n", data) is not None
    lines = re.split(rb"\r\n|\r|\n", data)
    return BodyFacts(
        bare_eol=bare,
        nul=0 in data,
        long_line=any(len(line) > 998 for line in re.split(rb"\n", data.replace(b"\r\n", b"\n"))),
        eight_bit=any(b > 127 for b in data),
        dot_line=any(line.startswith(b".") for line in lines),
    )


@SETTINGS
@given(WIRE_BYTES)
def test_facts_match_the_line_by_line_oracle(data: bytes) -> None:
    facts, oracle = BodyFacts.of(data), oracle_facts(data)
    assert facts.bare_eol == oracle.bare_eol
    assert facts.nul == oracle.nul
    assert facts.eight_bit == oracle.eight_bit
    assert facts.transfer_encoding() == oracle.transfer_encoding()
    if not facts.bare_eol:  # with a bare LF the octet count of a line is moot: binary anyway
        assert facts.long_line == oracle.long_line
        assert facts.dot_line == oracle.dot_line


@SETTINGS
@given(st.lists(WIRE_BYTES, min_size=1, max_size=6))
def test_payload_of_parts_is_the_payload_of_the_joined_message(parts: list[bytes]) -> None:
    joined = b"".join(parts)
    outgoing = Outgoing(Part.of(p) for p in parts)
    assert outgoing.data() == joined
    assert outgoing.size == len(joined)
    assert outgoing.eight_bit == (not joined.isascii())
    assert outgoing.payload() == dot_stuffed(wire_bytes(joined))


def as_views(parts: list[bytes]) -> list[memoryview]:
    """``parts`` as views of one buffer that holds more around them, as a consumed record holds
    the original among its other fields."""
    whole = b"<head>" + b"".join(parts) + b"<tail>"
    views, at = [], len(b"<head>")
    for part in parts:
        views.append(memoryview(whole)[at : at + len(part)])
        at += len(part)
    return views


@SETTINGS
@given(st.lists(WIRE_BYTES, min_size=1, max_size=6))
def test_parts_that_are_views_go_out_as_the_same_bytes(parts: list[bytes]) -> None:
    plain = Outgoing(Part.of(p) for p in parts)
    viewed = Outgoing(Part.of(v) for v in as_views(parts))
    assert viewed.data() == plain.data() and isinstance(viewed.data(), bytes)
    assert viewed.size == plain.size
    assert b"".join(viewed.payload_parts()) == viewed.payload() == plain.payload()
    # what the header section is read for: whether it carries UTF-8 (SMTPUTF8)
    head = viewed.header_section()
    assert isinstance(head, bytes) and plain.data().startswith(head)
    assert has_utf8_header_fields(head) == has_utf8_header_fields(plain.header_section())


@SETTINGS
@given(WIRE_BYTES, WIRE_BYTES, st.sampled_from([b"\r\n\r\n", b"..", b"x\x00", b"<tail>", b"d>"]))
def test_contains_of_a_view_is_contains_of_its_bytes(
    data: bytes, other: bytes, needle: bytes
) -> None:
    # the needle may lie outside the view, in the buffer around it: the short cut must not count it
    whole = other + b"<head>" + data + b"<tail>" + other
    start = len(other) + len(b"<head>")
    view = memoryview(whole)[start : start + len(data)]
    assert contains(view, needle) == (needle in data) == contains(data, needle)


def test_a_view_that_starts_with_its_header_section() -> None:
    (view,) = as_views([b"Subject: s\r\n\r\n.dot\r\nbody\r\n\r\nmore\r\n"])
    out = Outgoing.of(view, BodyFacts.of(bytes(view)))
    assert out.header_section() == b"Subject: s\r\n\r\n"
    assert b"".join(out.payload_parts()) == b"Subject: s\r\n\r\n..dot\r\nbody\r\n\r\nmore\r\n.\r\n"
    # a part without facts learns them from its bytes, not from the buffer around it
    assert Part.of(as_views([b"x\xc3\xa4"])[0]).facts == BodyFacts.of(b"x\xc3\xa4")


@SETTINGS
@given(arbitrary_message())
def test_a_report_sent_as_parts_is_the_report_joined(original: bytes) -> None:
    config = make_config({})
    copy = make_copy(original=original)
    parts = report_parts(copy, config)
    assert len(parts.parts) == 4 and parts.parts[2].data is copy["original"]
    assert parts.data() == build_report(copy, config)
    assert parts.payload() == dot_stuffed(wire_bytes(build_report(copy, config)))
    # the small parts are ours: CRLF lines, no dot line to stuff
    for part in (parts.parts[0], parts.parts[1], parts.parts[3]):
        assert not part.facts.bare_eol and not part.facts.dot_line


def test_copy_format_and_ndr_go_out_as_the_original_unchanged() -> None:
    config = make_config({})
    original = b"Subject: s\r\n\r\n.dot\r\n"
    for copy in (
        make_copy(original=original, format="COPY"),
        make_copy(original=original, kind="NDR"),
    ):
        out = outgoing_message(copy, config)
        assert out.data() == original
        assert out.payload() == b"Subject: s\r\n\r\n..dot\r\n.\r\n"


def test_empty_message_payload() -> None:
    assert Outgoing.of(b"").payload() == dot_stuffed(b"") == b"\r\n.\r\n"


# -- the facts travel: ingest -> trace -> journal copy / relay copy -> delivery ----------------


def _event_with_facts(body: bytes) -> dict[str, Any]:
    event = make_event("alice@ext.example", ["bob@corp.example"], body=body)
    event["body_facts"] = BodyFacts.of(event["raw"]).record()
    return event


@SETTINGS
@given(arbitrary_message())
def test_facts_stay_true_through_ingest_trace_and_every_copy(body: bytes) -> None:
    body = wire_bytes(body)  # ingest stores CRLF lines only
    config = make_config({})
    event = traced(_event_with_facts(body), "mx.corp.example")
    assert BodyFacts.from_record(event["body_facts"]) == BodyFacts.of(event["raw"])
    planned = PlannedCopy(
        copy_id="c1",
        journal_address="journal@corp.example",
        ndr_address="ndr@corp.example",
        directions=(Direction.INBOUND,),
        sources=(JournalSource.GLOBAL,),
        format=ReportFormat.REPORT,
        recipients=(),
    )
    copy = decode(encode(JOURNAL_COPY, journal_copy_record(event, planned)), JOURNAL_COPY)
    assert copy["body_facts"] == event["body_facts"]
    assert report_parts(copy, config).payload() == dot_stuffed(build_report(copy, config))
    # an event without our trace field (before MessageReceived v2): the relay prepends it
    old = _event_with_facts(body)
    hop = {"host": "127.0.0.1", "port": 25}
    relay_cfg = make_config({"relay": {"inbound": hop, "outbound": hop, "add_received": True}})
    relayed_copies = relay_copies({**old, "listener_role": "relay"}, relay_cfg)
    assert relayed_copies
    for relayed in relayed_copies:
        assert BodyFacts.from_record(relayed["body_facts"]) == BodyFacts.of(relayed["original"])


def test_a_copy_without_facts_learns_them() -> None:
    copy = make_copy()
    assert copy.get("body_facts") is None
    assert original_body_facts(copy) == BodyFacts.of(copy["original"])
