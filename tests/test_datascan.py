"""The native scans against their oracles (issue 17): ingest's DATA scan against the regular
expressions it replaced, and the wire form's long-line check (``mailjournal.smtp._lines``)
against a split-lines reference.

The regexes below are the oracle: what ``ingest.datapath`` searched with before the scan moved to
C. For any bytes, any start, any limit and both modes the native functions must give the same
answer; the parser-level tests (``tests/test_ingest_datapath.py``, an independent reference model)
and the fuzzer's harness run the scan through ``DataParser``.

Memory safety is checked on the same inputs: every buffer is also given to the scan flush against
an inaccessible page, once ending at one and once starting after one, so a read of one octet
outside the buffer on either side kills the test process with SIGSEGV (a bytes object's hidden
NUL or a bytearray's spare capacity would hide it from any other check)."""

from __future__ import annotations

import ctypes
import itertools
import mmap
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest._datascan import bare_cr, scan
from mailjournal.smtp._lines import long_line
from mailjournal.smtp.wire import MAX_LINE, has_long_line

_PROT_NONE = 0  # not in the mmap module before Python 3.13


class _Fence:
    """Three pages, the outer two PROT_NONE: a buffer of up to a page placed against either."""

    PAGE = mmap.PAGESIZE

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 3 * self.PAGE)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for page in (0, 2):
            if libc.mprotect(self.base + page * self.PAGE, self.PAGE, _PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")

    def _at(self, offset: int, data: bytes) -> memoryview:
        assert offset >= self.PAGE and offset + len(data) <= 2 * self.PAGE
        self._map[offset : offset + len(data)] = data
        return memoryview(self._map)[offset : offset + len(data)]

    def ending(self, data: bytes) -> memoryview:
        """``data``, its last octet just before an inaccessible page."""
        return self._at(2 * self.PAGE - len(data), data)

    def starting(self, data: bytes) -> memoryview:
        """``data``, its first octet just after an inaccessible page."""
        return self._at(self.PAGE, data)


_FENCE = _Fence()


def _fenced(data: bytes) -> Iterator[bytearray | memoryview]:
    """The buffer as the parser holds it, then against each fence (lazily: the fences share a
    page, so each view is written just before it is used)."""
    yield bytearray(data)
    yield _FENCE.ending(data)
    yield _FENCE.starting(data)


_PROBE = """
import ctypes
from tests.test_datascan import _FENCE
view = _FENCE.{place}(b"ab")
start = ctypes.addressof(ctypes.c_char.from_buffer(view))
ctypes.string_at(start + {offset}, 1)
"""


@pytest.mark.parametrize(("place", "offset"), [("ending", 2), ("starting", -1)])
def test_the_fence_faults(place: str, offset: int) -> None:
    """The fence can fail a test: the octet just outside a fenced buffer cannot be read."""
    code = _PROBE.format(place=place, offset=offset)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == -11, (done.returncode, done.stderr[-500:])


# the octets the scan treats apart, and content
_DATA = st.lists(st.sampled_from(b"\r\n.a"), max_size=60).map(bytes) | st.binary(max_size=60)


@st.composite
def _buffer_and_offsets(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A buffer and two offsets in it (or just outside it, either side)."""
    buf = draw(_DATA)
    offset = st.integers(-1, len(buf) + 1)
    return buf, draw(offset), draw(offset)


def _pattern(limit: int, dots: bool) -> re.Pattern[bytes]:
    if dots:
        return re.compile(rb"\n(?:(\.)|[^\n]{0,%d}+(?:[^\n]|(?<!\r)\n))" % limit)
    return re.compile(rb"\n[^\n]{0,%d}+(?:[^\n]|(?<!\r)\n)" % limit)


def _oracle(
    buf: bytes, pos: int, limit: int, dots: bool, anchored: bool
) -> tuple[int, int, bool] | None:
    p = _pattern(limit, dots)
    m = p.match(buf, pos) if anchored else p.search(buf, pos)
    if m is None:
        return None
    return m.start(), m.end(), dots and m.group(1) is not None


def _long_line_reference(buf: bytes, limit: int) -> bool:
    """A line over ``limit`` octets, a line's CR belonging to its CRLF: each LF-ended line may
    hold ``limit`` + 1 octets before its LF, the last (no LF) ``limit``."""
    *ended, last = buf.split(b"\n")
    return any(len(line) > limit + 1 for line in ended) or len(last) > limit


def test_every_short_buffer() -> None:
    """Exhaustive where the edges are: every buffer of up to 6 octets over CR, LF, "." and one
    content octet, at every start and limits around the line lengths it can hold."""
    for n in range(7):
        for octets in itertools.product(b"\r\n.a", repeat=n):
            buf = bytes(octets)
            for pos in range(-1, n + 2):
                for end in range(-1, n + 2):
                    expected_cr = re.search(rb"\r[^\n]", buf[max(pos, 0) : max(end, 0)])
                    for b in _fenced(buf):
                        assert bare_cr(b, pos, end) is (expected_cr is not None), (buf, pos, end)
                if pos == 0:
                    for limit in range(5):
                        expected_long = _long_line_reference(buf, limit)
                        for b in _fenced(buf):
                            assert long_line(b, limit) is expected_long, (buf, limit)
                for limit, dots, anchored in itertools.product(
                    range(5), (True, False), (True, False)
                ):
                    expected = _oracle(buf, max(pos, 0), limit, dots, anchored)
                    for b in _fenced(buf):
                        got = scan(b, pos, limit, dots, anchored)
                        assert got == expected, (buf, pos, limit, dots, anchored)


@settings(max_examples=1000)
@given(
    case=_buffer_and_offsets(),
    limit=st.integers(0, 12),
    dots=st.booleans(),
    anchored=st.booleans(),
)
def test_scan_is_the_regex(
    case: tuple[bytes, int, int], limit: int, dots: bool, anchored: bool
) -> None:
    buf, pos, _ = case
    # a negative start means 0 for the scan; the regex takes it the same way
    expected = _oracle(buf, max(pos, 0), limit, dots, anchored)
    for b in _fenced(buf):
        assert scan(b, pos, limit, dots, anchored) == expected


@settings(max_examples=1000)
@given(case=_buffer_and_offsets())
def test_bare_cr_is_the_regex(case: tuple[bytes, int, int]) -> None:
    buf, start, end = case
    expected = re.search(rb"\r[^\n]", buf[max(start, 0) : max(end, 0)]) is not None
    for b in _fenced(buf):
        assert bare_cr(b, start, end) is expected


@settings(max_examples=1000)
@given(buf=_DATA, limit=st.integers(0, 12))
def test_long_line_is_the_reference(buf: bytes, limit: int) -> None:
    expected = _long_line_reference(buf, limit)
    for b in _fenced(buf):
        assert long_line(b, limit) is expected


# lines around RFC 5322's 998, ended by CRLF, a bare LF or nothing, a bare CR inside some
_LINE = st.tuples(
    st.integers(0, 1003) | st.sampled_from([997, 998, 999, 1000, 1001]),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
    st.booleans(),
).map(lambda t: (b"a\rb" if t[2] else b"") + b"x" * t[0] + t[1])


@settings(max_examples=500)
@given(lines=st.lists(_LINE, max_size=6))
def test_the_wire_long_line_check_at_998_is_the_reference(lines: list[bytes]) -> None:
    """``wire.has_long_line`` (the native check at RFC 5322's limit, every stage's body fact)
    on lines around 998 octets, longer than the fenced buffers above."""
    buf = b"".join(lines)
    assert has_long_line(buf) is _long_line_reference(buf, MAX_LINE)


@pytest.mark.parametrize("length", [998, 999, 1000, 1001, 5000])
def test_lines_at_the_limit_in_a_large_buffer(length: int) -> None:
    line = b"x" * length + b"\r\n"
    buf = b"\r\n" + b"ok\r\n" * 10_000 + line + b"ok\r\n"
    for limit in (998, 1000):
        assert scan(buf, 1, limit, True, False) == _oracle(buf, 1, limit, True, False)


def test_any_buffer_type_and_a_clear_error_for_others() -> None:
    data = b"\r\n.\r\n"
    expected = (1, 3, True)
    for buf in (data, bytearray(data), memoryview(data)):
        assert scan(buf, 0, 1000, True, False) == expected
    with pytest.raises(TypeError):
        scan("\r\n.\r\n", 0, 1000, True, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bare_cr(None, 0, 1)  # type: ignore[arg-type]
