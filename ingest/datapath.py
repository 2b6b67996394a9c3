"""The DATA phase, read in bulk instead of line by line.

Reading DATA one line at a time in Python (as aiosmtpd does) caps it at a few hundred 100 KB
messages a second. Here the bytes are taken as they come and the work is done by C-speed searches
over the buffer:

- the end of data is the exact sequence ``<CRLF>.<CRLF>``; the CRLF of the DATA command counts as
  the first one, so an empty message (``.<CRLF>`` right away) ends too. Nothing else ends DATA:
  not ``<LF>.<LF>``, ``<CR>.<CR>``, ``<LF>.<CRLF>`` nor ``<CRLF>.<LF>`` (SMTP smuggling,
  CVE-2023-51764 class), so one DATA is always at most one message;
- dot-unstuffing (RFC 5321 4.5.2) removes the first character of every line that starts with a
  period, as one ``replace`` over the message, and only when the search saw such a line;
- one scan (:mod:`ingest._datascan`, native: one ``memchr`` per line) finds, at every LF, a line
  that starts with "." (the terminator or a stuffed line), is too long, or ends with a bare LF; a
  second one finds a bare CR. With
  ``bare_newline = "reject"`` the message is refused after the terminator (``550 5.6.0``); with
  ``"normalize"`` (Postfix's ``smtpd_forbid_bare_newline = normalize``) every bare CR and bare LF
  becomes CRLF in the stored message; dot-unstuffing then applies only to lines that began after
  a real CRLF, and the end of data still needs the exact ``<CRLF>.<CRLF>``;
- size and line length are enforced while reading; once a limit is crossed the rest is read and
  discarded up to the terminator, so memory stays bounded, and the refusal comes after it.

:class:`DataParser` is pure (feed it chunks, however split); the server's protocol
(:mod:`ingest.connection`) feeds it each read and processes what follows the terminator
(pipelined commands) as commands.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

from ingest._datascan import bare_cr as has_bare_cr
from ingest._datascan import scan as scan_lines
from mailjournal.smtp.wire import BodyFacts, has_long_line

# a line starting with "."; the terminator and dot-stuffed lines are among them
_DOT_LINE = re.compile(rb"\n\.")
_NEWLINES = re.compile(rb"\r\n|\r|\n")


class DataStatus(enum.Enum):
    OK = "ok"
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    BARE_NEWLINE = "bare_newline"
    NO_MEMORY = "no_memory"  # the in-flight byte budget refused more


class DataParser:
    """Incremental DATA reader. ``feed()`` chunks until it returns the bytes after the
    terminator (possibly ``b""``); then :attr:`status` and :attr:`message` hold the result.

    Clean data costs two native passes: one for dot lines, long lines and bare LFs, one for bare
    CRs. Once a limit is crossed, only the terminator is searched for."""

    __slots__ = (
        "_bare",
        "_buf",
        "_cr_checked",
        "_pos",
        "_stuffed",
        "bare_newline",
        "done",
        "max_line_length",
        "max_size",
        "message",
        "reserve",
        "reserved",
        "status",
        "wire_bytes",
    )

    def __init__(
        self,
        *,
        max_size: int,
        max_line_length: int = 1000,
        bare_newline: str = "reject",
        reserve: Callable[[int], bool] | None = None,
    ) -> None:
        self.max_size = max_size
        # a line may carry max_line_length octets with its CRLF, plus a transparency dot
        self.max_line_length = max_line_length
        if bare_newline not in ("reject", "normalize"):
            raise ValueError(f"bare_newline must be 'reject' or 'normalize', not {bare_newline!r}")
        self.bare_newline = bare_newline
        self.reserve = reserve
        self.reserved = 0  # bytes taken from the in-flight budget
        self.wire_bytes = 0
        self.status = DataStatus.OK
        self.message: bytes | None = None
        self.done = False
        # the CRLF that ended the DATA command line starts the buffer, so the terminator and a
        # stuffed first line look like any other line start
        self._buf = bytearray(b"\r\n")
        self._pos = 1  # a LF: lines starting after it are not yet checked
        self._cr_checked = 2  # start of the region not yet checked for a bare CR
        self._stuffed = False
        self._bare = False

    @property
    def discarding(self) -> bool:
        return self.status is not DataStatus.OK

    def _fail(self, status: DataStatus) -> None:
        if self.status is DataStatus.OK:
            self.status = status

    def feed(self, chunk: bytes) -> bytes | None:
        """Consume ``chunk``; returns None while the terminator has not been seen, else the bytes
        that followed it (to be processed as commands)."""
        if self.done:
            raise RuntimeError("DATA already complete")
        self.wire_bytes += len(chunk)
        if self.status is DataStatus.OK and self.reserve is not None and chunk:
            if self.reserve(len(chunk)):
                self.reserved += len(chunk)
            else:
                self._fail(DataStatus.NO_MEMORY)
        buf = self._buf
        buf += chunk
        if self.status is DataStatus.OK:
            end = self._check()
            if end is not None:
                return self._done(end)
            if len(buf) - 2 - 3 > self.max_size:  # a partial terminator is not content
                self._fail(DataStatus.TOO_BIG)
        if self.status is not DataStatus.OK:
            end = self._find_terminator()
            if end is not None:
                return self._done(end)
            # keep only what the terminator search still needs (and the byte before it)
            keep_from = max(0, self._pos - 1)
            del buf[:keep_from]
            self._pos -= keep_from
        return None

    def _done(self, end: int) -> bytes:
        """The terminator's LF is at ``end + 2``: the message is buf[2:end]."""
        leftover = bytes(self._buf[end + 3 :])
        self._finish(end)
        return leftover

    def _check(self) -> int | None:
        """Scan the new complete lines; returns where the message ends once the terminator is
        in, else None (and sets :attr:`status` when a check fails)."""
        buf = self._buf
        pos = self._pos
        limit = self.max_line_length
        while True:
            found = scan_lines(buf, pos, limit, True, False)
            if found is None:
                break
            i, end, dot = found  # buf[i] is a LF
            if dot:  # a line starting with "."
                if len(buf) < i + 4:  # the terminator? the next chunk will tell
                    self._pos = i
                    return None
                if buf[i - 1] == 13:
                    if buf[i + 2] == 13 and buf[i + 3] == 10:
                        self._check_cr(i + 1)
                        return i + 1
                    self._stuffed = True  # dot-stuffed (or a sloppy single dot)
                # the dot line itself is a line like any other
                line = scan_lines(buf, i, limit, False, True)
                if line is None:
                    if buf.find(b"\n", i + 1) < 0:  # not complete yet: check it next time
                        self._pos = i
                        return None
                    pos = i + 1
                    continue
                end = line[1]
            if buf[end - 1] != 10:
                self._fail(DataStatus.LINE_TOO_LONG)
                self._pos = i
                return None
            # a bare LF ends the line
            self._bare = True
            if self.bare_newline == "reject":
                self._fail(DataStatus.BARE_NEWLINE)
                self._pos = i
                return None
            pos = end - 1
        last_lf = buf.rfind(b"\n", pos)
        if last_lf >= 0:
            self._check_cr(last_lf + 1)
            pos = last_lf
        # the unfinished last line is scanned again with the next chunk (a line already too long
        # has matched above)
        self._pos = pos
        return None

    def _check_cr(self, end: int) -> None:
        """Bare CR check for buf[_cr_checked:end], a region after a LF and ending with one (bare
        LFs are the scanner's)."""
        start = self._cr_checked
        if end <= start:
            return
        self._cr_checked = end
        if self._bare:
            return
        if has_bare_cr(self._buf, start, end):
            self._bare = True
            if self.bare_newline == "reject":
                self._fail(DataStatus.BARE_NEWLINE)

    def _find_terminator(self) -> int | None:
        buf = self._buf
        pos = self._pos
        search = _DOT_LINE.search
        while True:
            m = search(buf, pos)
            if m is None:
                self._pos = max(pos, len(buf) - 1)
                return None
            i = m.start()
            if len(buf) < i + 4:
                self._pos = i
                return None
            if i > 0 and buf[i - 1] == 13 and buf[i + 2] == 13 and buf[i + 3] == 10:
                return i + 1
            pos = i + 1

    def _finish(self, end: int) -> None:
        """buf[2:end] is the message as sent (dot-stuffed)."""
        self.done = True
        buf = self._buf
        if self.status is DataStatus.OK and end - 2 > self.max_size:
            self._fail(DataStatus.TOO_BIG)
        if self.status is not DataStatus.OK:
            self._buf = bytearray()
            return
        if self._stuffed:
            # buf starts with the virtual CRLF, so a stuffed first line is unstuffed too
            data = bytes(memoryview(buf)[:end]).replace(b"\r\n.", b"\r\n")[2:]
        else:
            data = bytes(memoryview(buf)[2:end])
        self._buf = bytearray()
        if self._bare:  # only reachable in "normalize" mode
            data = _NEWLINES.sub(b"\r\n", data)
        self.message = data

    def facts(self) -> BodyFacts:
        """The facts of :attr:`message` (status OK), mostly from what the read learnt: no bare
        line ending (refused, or normalised), a line starting with "." only if the wire had a
        stuffed line or a bare LF (normalised into a CRLF), so clean mail is not searched for
        one; the NUL, 8-bit and long-line checks are C-speed probes."""
        data = self.message
        if data is None:
            raise RuntimeError("no message")
        return BodyFacts(
            bare_eol=False,
            nul=b"\x00" in data,
            long_line=has_long_line(data),
            eight_bit=not data.isascii(),
            dot_line=(self._stuffed or self._bare) and (data.startswith(b".") or b"\r\n." in data),
        )
