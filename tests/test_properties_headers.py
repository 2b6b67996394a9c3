"""Property-based tests of the header reader ingest runs on every message (ingest/headers.py).

The messages are built from a known field list (tests/strategies.py), so each property compares
the reader with what the message really carries; arbitrary bytes check that nothing raises and
that the reader still agrees with Python's own parser (``email.feedparser``, compat32), which
the module documents it follows.
"""

from __future__ import annotations

import re
from email import policy
from email.parser import BytesHeaderParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.headers import FIELDS, header_block, header_fields, received_count, selected_headers
from tests.strategies import (
    BODY_MARKER,
    EOLS,
    RawField,
    RawMessage,
    arbitrary_message,
    header_value_bytes,
    obs_colons_closed,
    raw_message,
)

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected_selected(msg: RawMessage) -> dict[str, str | None]:
    """The documented rule: raw value, unfolded, blanks stripped, first occurrence wins, 8-bit
    kept when UTF-8 and replaced otherwise, None when absent."""
    out: dict[str, str | None] = dict.fromkeys(FIELDS.values())
    for f in msg.fields:
        k = FIELDS.get(f.name.decode("ascii").lower())
        if k is not None and out[k] is None:
            out[k] = f.unfolded.strip(b" \t").decode("utf-8", "replace")
    return out


@SETTINGS
@given(arbitrary_message())
def test_never_raises_and_the_block_is_a_prefix(raw: bytes) -> None:
    block = header_block(raw)
    assert raw.startswith(block)
    h = selected_headers(raw)
    assert set(h) == set(FIELDS.values())
    for value in h.values():
        # a value can never carry a line break into an event, a report or a log line
        assert value is None or not ({"\r", "\n"} & set(value))
    assert received_count(raw) >= 0


@SETTINGS
@given(raw_message())
def test_fields_come_from_the_header_section_by_the_documented_rule(msg: RawMessage) -> None:
    """Every body line here looks like a header field (several carry a marker); whatever the
    line endings and the empty line, only the header section is read, by the documented rule
    (first occurrence, unfolded, None when absent)."""
    assert selected_headers(msg.raw) == expected_selected(msg)
    received = sum(1 for f in msg.fields if f.name.lower() == b"received")
    assert received_count(msg.raw) == received  # Received: lines in the body do not count
    fields = list(header_fields(header_block(msg.raw)))
    assert [name for name, _ in fields] == [f.name for f in msg.fields]
    assert all(BODY_MARKER not in value for _, value in fields)

    # with a CRLF or LF empty line, the block is the header section up to and including the
    # line ending of its last field line (an empty line of a bare CR is found by header_fields)
    if msg.header.endswith(b"\r") or msg.separator == b"\r":
        assert header_block(msg.raw).startswith(msg.header)
    else:
        assert header_block(msg.raw) == msg.header


@SETTINGS
@given(
    st.lists(st.sampled_from(EOLS), min_size=1, max_size=4),
    header_value_bytes(),
    st.data(),
)
def test_a_folded_subject_equals_its_unfolded_form(
    eols: list[bytes], value: bytes, data: st.DataObject
) -> None:
    """Folding = a line ending inserted before blanks; the reader removes exactly those."""
    value = b"a " + value + b" z"  # at least one blank to fold at
    blanks = [i for i, b in enumerate(value) if b in b" \t"]
    folds = sorted(data.draw(st.sets(st.sampled_from(blanks), min_size=1, max_size=len(eols))))
    lines, prev = [], 0
    for i in folds:
        lines.append(value[prev:i])
        prev = i
    lines.append(value[prev:])
    ends = [eols[i % len(eols)] for i in range(len(lines))]
    folded = RawField(b"Subject", tuple(lines), tuple(ends)).render()
    tail = b"To: x@corp.example\r\n\r\nSubject: body\r\n"
    unfolded = b"Subject: " + value + b"\r\n" + tail
    assert selected_headers(folded + tail) == selected_headers(unfolded)
    assert selected_headers(folded + tail)["subject"] == value.strip(b" \t").decode(
        "utf-8", "replace"
    )


def _python_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(obs_colons_closed(raw))
    return [
        (
            name.encode("ascii", "surrogateescape"),
            # compat32 keeps the folding line breaks inside the raw value: unfold them
            re.sub(r"\r?\n(?=[ \t])|\r(?=[ \t])", "", value)
            .strip(" \t\r\n")
            .encode("ascii", "surrogateescape"),
        )
        for name, value in msg.raw_items()
    ]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_message())
def test_fields_match_the_python_email_parser(raw: bytes) -> None:
    """The same fields in the same order with the same values as ``email.feedparser`` sees —
    on any bytes, bare CR empty lines and mbox ``From `` lines included."""
    ours = [(name, value.strip(b" \t")) for name, value in header_fields(header_block(raw))]
    assert ours == _python_fields(raw)
