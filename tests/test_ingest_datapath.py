"""The bulk DATA reader, without a server: terminator, dot-unstuffing, smuggling, limits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.datapath import DataParser, DataStatus
from mailjournal.smtp.wire import BodyFacts

MESSAGES = [
    b"",
    b"Subject: x\r\n\r\nbody\r\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nend\r\n",
    b".first line starts with a dot\r\nsecond\r\n",
    b"no final newline",
    b"\r\n\r\n\r\n",
    b"a\r\n" * 500 + b"tail\r\n",
]


def stuff(message: bytes) -> bytes:
    """What an RFC 5321 client sends for ``message`` (dot-stuffed, terminated)."""
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    if not body.endswith(b"\r\n") and body:
        body += b"\r\n"
    return body + b".\r\n"


def run(chunks: list[bytes], **kw: object) -> tuple[DataParser, bytes | None]:
    parser = DataParser(max_size=kw.pop("max_size", 10_000_000), **kw)  # type: ignore[arg-type]
    leftover = None
    for chunk in chunks:
        assert leftover is None, "data after the terminator was consumed as message"
        leftover = parser.feed(chunk)
    return parser, leftover


def splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), rng.randint(1, 6))))
        parts, prev = [], 0
        for c in [*cuts, len(data)]:
            parts.append(data[prev:c])
            prev = c
        out.append([p for p in parts if p])
    return out


@pytest.mark.parametrize("message", MESSAGES)
def test_any_chunking_gives_the_message_back(message: bytes) -> None:
    wire = stuff(message)
    expected = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
    rng = random.Random(len(message))
    for chunks in splits(wire + b"QUIT\r\n", rng):
        parser, leftover = run(chunks[:1])
        for chunk in chunks[1:]:
            if leftover is not None:
                leftover += chunk
            else:
                leftover = parser.feed(chunk)
        assert parser.status is DataStatus.OK
        assert parser.message == expected
        assert leftover == b"QUIT\r\n"


def test_empty_message_ends_at_once() -> None:
    parser, leftover = run([b".\r\nMAIL FROM:<a@b.example>\r\n"])
    assert parser.message == b"" and leftover == b"MAIL FROM:<a@b.example>\r\n"


def test_sloppy_single_leading_dot_is_removed_as_rfc_5321_says() -> None:
    parser, _ = run([b"a\r\n.b\r\n.\r\n"])
    assert parser.message == b"a\r\nb\r\n"


SMUGGLING = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r"]


@pytest.mark.parametrize("probe", SMUGGLING, ids=repr)
@pytest.mark.parametrize("mode", ["reject", "normalize"])
def test_smuggling_never_ends_data(probe: bytes, mode: str) -> None:
    smuggled = (
        b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@corp.example>\r\nDATA\r\n"
        b"From: ceo@corp.example\r\n\r\nsmuggled\r\n"
    )
    wire = b"Subject: first\r\n\r\nhello" + probe + smuggled + b".\r\n"
    rng = random.Random(1)
    for chunks in splits(wire, rng):
        parser, leftover = run(chunks, bare_newline=mode)
        assert leftover == b"", "DATA ended early: the rest would run as commands"
        if mode == "reject":
            assert parser.status is DataStatus.BARE_NEWLINE and parser.message is None
        else:
            assert parser.status is DataStatus.OK
            assert parser.message is not None
            # one message holding everything, every line ending normalised to CRLF
            assert b"smuggled" in parser.message
            assert parser.message.count(b"\r") == parser.message.count(b"\n")
            assert parser.message.count(b"\n") == parser.message.count(b"\r\n")


def test_normalize_leaves_dots_after_bare_lf_alone() -> None:
    parser, _ = run([b"a\n..b\r\n.\r\n"], bare_newline="normalize")
    assert parser.message == b"a\r\n..b\r\n"


def test_bare_cr_inside_a_line_is_refused() -> None:
    parser, _ = run([b"Subject: a\rb\r\n\r\nx\r\n.\r\n"])
    assert parser.status is DataStatus.BARE_NEWLINE


def test_size_limit_exact_and_over() -> None:
    body = b"x" * 98 + b"\r\n"  # 100 bytes
    ok, _ = run([body + b".\r\n"], max_size=100)
    assert ok.status is DataStatus.OK and ok.message == body
    over, _ = run([b"y" + body + b".\r\n"], max_size=100)
    assert over.status is DataStatus.TOO_BIG and over.message is None


def test_oversized_data_is_read_to_the_terminator_with_bounded_memory() -> None:
    parser = DataParser(max_size=10_000)
    line = b"z" * 78 + b"\r\n"
    for _ in range(2_000):  # 160 KB
        assert parser.feed(line * 1) is None
        assert len(parser._buf) < 12_000
    assert parser.status is DataStatus.TOO_BIG
    assert parser.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    assert parser.message is None


def test_line_length_limit() -> None:
    # 998 octets + CRLF (RFC 5322 2.1.1), plus the transparency dot on the wire
    ok, _ = run([b"a" * 998 + b"\r\n.\r\n"], max_line_length=1000)
    assert ok.status is DataStatus.OK
    stuffed, _ = run([b"." + b"." * 998 + b"\r\n.\r\n"], max_line_length=1000)
    assert stuffed.status is DataStatus.OK and stuffed.message == b"." * 998 + b"\r\n"
    long, leftover = run([b"a" * 1000 + b"\r\n.\r\n"], max_line_length=1000)
    assert long.status is DataStatus.LINE_TOO_LONG and leftover == b""


def test_endless_line_is_caught_while_reading() -> None:
    parser = DataParser(max_size=10_000_000, max_line_length=1000)
    for _ in range(100):
        assert parser.feed(b"x" * 1000) is None
    assert parser.status is DataStatus.LINE_TOO_LONG
    assert len(parser._buf) < 2000
    assert parser.feed(b"\r\n.\r\n") == b""


def test_budget_refusal_discards_and_counts_reserved_bytes() -> None:
    granted: list[int] = []

    def reserve(n: int) -> bool:
        if sum(granted) + n > 50:
            return False
        granted.append(n)
        return True

    parser = DataParser(max_size=10_000, reserve=reserve)
    assert parser.feed(b"a" * 30 + b"\r\n") is None
    assert parser.feed(b"b" * 30 + b"\r\n") is None
    assert parser.status is DataStatus.NO_MEMORY
    assert parser.reserved == 32 == sum(granted)
    assert parser.feed(b".\r\n") == b""


def test_feeding_after_the_end_is_an_error() -> None:
    parser, _ = run([b".\r\n"])
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


def test_dot_lines_are_checked_like_other_lines() -> None:
    long, _ = run([b"a\r\n." + b"x" * 1200 + b"\r\n.\r\n"], max_line_length=1000)
    assert long.status is DataStatus.LINE_TOO_LONG
    bare, _ = run([b"a\r\n.x\nb\r\n.\r\n"])
    assert bare.status is DataStatus.BARE_NEWLINE
    equal_counts, _ = run([b"x\ry\nz\r\n.\r\n"])  # as many CRs as LFs, still bare
    assert equal_counts.status is DataStatus.BARE_NEWLINE


def reference(wire: bytes, max_line_length: int) -> tuple[set[DataStatus], bytes, bytes]:
    """What the parser must find: (violations, message, leftover), by the book and slowly."""
    data = b"\r\n" + wire
    end = data.find(b"\r\n.\r\n")
    assert end >= 0
    content, leftover = data[2 : end + 2], data[end + 5 :]
    violations = set()
    for i, c in enumerate(content):
        if (c == 13 and content[i + 1 : i + 2] != b"\n") or (
            c == 10 and (i == 0 or content[i - 1] != 13)
        ):
            violations.add(DataStatus.BARE_NEWLINE)
    if any(len(line) > max_line_length for line in content.split(b"\n")):
        violations.add(DataStatus.LINE_TOO_LONG)
    lines = content.split(b"\r\n")
    message = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    return violations, message, leftover


def test_random_data_against_the_reference() -> None:
    rng = random.Random(20240701)
    alphabet = [b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r"]
    for _ in range(3000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        wire = body + b"\r\n.\r\n" + b"NEXT\r\n"
        violations, message, leftover = reference(wire, 12)
        for chunks in splits(wire, rng)[:4]:
            parser = DataParser(max_size=10_000, max_line_length=12)
            got = None
            for chunk in chunks:
                if got is not None:
                    got += chunk
                else:
                    got = parser.feed(chunk)
            assert got == leftover, (wire, chunks)
            if violations:
                assert parser.status in violations, (wire, chunks, parser.status, violations)
                assert parser.message is None
            else:
                assert parser.status is DataStatus.OK, (wire, chunks, parser.status)
                assert parser.message == message, (wire, chunks)


def test_random_data_against_the_reference_when_normalising() -> None:
    import re

    rng = random.Random(7)
    alphabet = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\n."]
    for _ in range(2000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        wire = body + b"\r\n.\r\n"
        violations, message, leftover = reference(wire, 12)
        for chunks in splits(wire, rng)[:3]:
            parser = DataParser(max_size=10_000, max_line_length=12, bare_newline="normalize")
            got = None
            for chunk in chunks:
                if got is not None:
                    got += chunk
                else:
                    got = parser.feed(chunk)
            assert got == leftover
            if DataStatus.LINE_TOO_LONG in violations:
                assert parser.status is DataStatus.LINE_TOO_LONG
            else:
                assert parser.status is DataStatus.OK, (wire, chunks)
                assert parser.message == re.sub(rb"\r\n|\r|\n", b"\r\n", message), (wire, chunks)


# what the read learns of a message (DataParser.facts) travels in the event and spares every
# later stage a scan; it must be what a scan of the stored bytes says, for any wire bytes
_WIRE_PIECES = st.sampled_from(
    [b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b"\n.", b"x", b"\x00", b"\xc3\xa4", b"a" * 997]
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_WIRE_PIECES, max_size=30).map(b"".join),
    st.sampled_from(["reject", "normalize"]),
    st.integers(min_value=1, max_value=7),
    st.sampled_from([12, 999, 1000, 1001, 1002, 2048]),
)
def test_facts_of_the_read_are_the_facts_of_the_stored_bytes(
    data: bytes, mode: str, pieces: int, max_line_length: int
) -> None:
    wire = data + b"\r\n.\r\n"
    step = max(1, len(wire) // pieces)
    chunks = [wire[i : i + step] for i in range(0, len(wire), step)]
    parser = DataParser(max_size=10_000_000, bare_newline=mode, max_line_length=max_line_length)
    for chunk in chunks:  # the wire bytes may hold a terminator of their own: DATA ends there
        if parser.feed(chunk) is not None:
            break
    assert parser.done
    if parser.status is not DataStatus.OK:
        return
    assert parser.message is not None
    assert parser.facts() == BodyFacts.of(parser.message)
