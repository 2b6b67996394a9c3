"""The I/O of one SMTP connection: an ``asyncio.Protocol`` that turns bytes into command lines and
DATA chunks, and replies into writes. No SMTP semantics here (:mod:`ingest.server` has them).

- every complete line in a read is handed to :meth:`SmtpConnection.line_received` synchronously;
  the replies it queues go out corked, in one write per read (a pipelined group costs one
  ``send``), and no coroutine runs per command;
- a command that must wait (a directory lookup, a password check, Kafka, an error delay, the TLS
  handshake) runs as one task (:meth:`wait`); until it ends no further line is processed (the
  bytes that arrive meanwhile are kept, and reading pauses past :data:`BUFFER_LIMIT`);
- in DATA (:meth:`start_data`) the bytes go to an :class:`ingest.datapath.DataParser` as they
  come, and what follows the terminator is processed as commands once the message is answered;
- a line longer than :data:`ingest.commands.LINE_LIMIT` is read to its end and answered ``500``;
- one timer serves the idle, command and DATA timeouts: a deadline is moved, the timer re-arms
  itself only when it fires early;
- when the client half-closes, what it sent is still answered, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine
from typing import Any, cast

from ingest.commands import LINE_LIMIT
from ingest.datapath import DataParser

log = logging.getLogger(__name__)

# bytes kept unprocessed (a task is running, or the client does not read its replies) before
# reading pauses
BUFFER_LIMIT = 256 * 1024


class SmtpConnection(asyncio.Protocol):
    """Subclasses implement :meth:`line_received`, :meth:`data_complete`, :meth:`timed_out`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.timeout = timeout
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._task_keeps_running = False  # a message being stored outlives its connection
        self._line_waiter: asyncio.Future[bytes] | None = None
        self._parser: DataParser | None = None
        self._long_line = False
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._lost = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._processing = False
        self._queued: list[tuple[Coroutine[Any, Any, None], bool]] = []

    # -- what subclasses implement -------------------------------------------------------------

    def line_received(self, line: bytes) -> None:
        """One command line (its line end included)."""
        raise NotImplementedError

    def line_too_long(self) -> None:
        """A line longer than LINE_LIMIT was read to its end."""
        raise NotImplementedError

    def data_complete(self, parser: DataParser) -> None:
        """The terminator of DATA was read (``parser.status`` says whether it is acceptable)."""
        raise NotImplementedError

    def data_progress(self) -> None:
        """Bytes of DATA arrived (re-arm the data timeout)."""

    def timer_fired(self, now: float) -> float | None:
        """The timer is due at ``now``; return when it should fire next (None: it ended the
        session). The base class handles the idle deadline."""
        if now < self._deadline:
            return self._deadline
        self.timed_out()
        return None

    def timed_out(self) -> None:
        self.close()

    def task_failed(self, error: BaseException) -> None:
        """A task of :meth:`wait` raised."""
        log.error("error in SMTP session", exc_info=error)
        self.close()

    # -- replies -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue reply bytes; they are written when the current read is processed (or at
        :meth:`flush`)."""
        self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Write what is queued and close."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def closing(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()

    # -- waiting ---------------------------------------------------------------------------------

    def wait(self, coro: Coroutine[Any, Any, None], *, keep_running: bool = False) -> None:
        """Run ``coro``; no line is processed until it ends. ``keep_running``: it is not
        cancelled when the connection is lost (a message being stored)."""
        if self._task is not None:  # after the one running (an error delay, then AUTH's)
            self._queued.append((coro, keep_running))
            return
        self.flush()
        self._task_keeps_running = keep_running
        self._task = self.loop.create_task(coro)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._line_waiter = None
        if not task.cancelled():
            error = task.exception()
            if error is not None and not self._lost:
                self.task_failed(error)
        if self._lost:
            return
        if self._queued:
            coro, keep_running = self._queued.pop(0)
            self.wait(coro, keep_running=keep_running)
            return
        self.flush()
        self._process()

    async def read_line(self) -> bytes:
        """In a task: the next line from the client (b"" when it closed)."""
        if self._eof:
            return b""
        self.flush()
        waiter: asyncio.Future[bytes] = self.loop.create_future()
        self._line_waiter = waiter
        self._process()
        return await waiter

    # -- DATA ------------------------------------------------------------------------------------

    def start_data(self, parser: DataParser) -> None:
        """From now on the bytes received go to ``parser`` up to its terminator."""
        self._parser = parser

    # -- timer -----------------------------------------------------------------------------------

    def reset_timeout(self, duration: float | None = None) -> None:
        self._deadline = self.loop.time() + (duration or self.timeout)
        self.arm(self._deadline)

    def arm(self, when: float) -> None:
        timer = self._timer
        if timer is None or timer.cancelled() or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(when, self._timer_cb)

    def _timer_cb(self) -> None:
        self._timer = None
        if self._lost:
            return
        due = self.timer_fired(self.loop.time())
        if due is not None:
            self._timer = self.loop.call_at(due, self._timer_cb)

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance() here
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is not None and not self._buf and self._task is None:
            # the common case in DATA: straight to the parser, no copy into our buffer
            self.data_progress()
            leftover = parser.feed(data)
            if leftover is None:
                return
            self._parser = None
            self._buf += leftover
            self.data_complete(parser)
        else:
            self._buf += data
        self._process()

    def _process(self) -> None:
        """Hand out complete lines and DATA while no task runs; then write the replies."""
        if self._processing:  # re-entered from a handler (read_line in a task started here)
            return
        self._processing = True
        try:
            self._process_lines()
        finally:
            self._processing = False
        self.flush()
        if self._lost:
            return
        if self._eof and self._task is None:  # nothing more will come: an open DATA is dropped
            self.close()
            return
        self._flow_control()

    def _process_lines(self) -> None:
        buf = self._buf
        while buf and not self._lost and not self._write_paused:
            if self._task is not None and self._line_waiter is None:
                return
            parser = self._parser
            if parser is not None:
                self.data_progress()
                chunk = bytes(buf)
                buf.clear()
                leftover = parser.feed(chunk)
                if leftover is None:
                    return
                self._parser = None
                buf += leftover
                self.data_complete(parser)
                continue
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > LINE_LIMIT:  # read on to the end of this line, then answer
                    self._long_line = True
                    buf.clear()
                return
            line = bytes(buf[: nl + 1])
            del buf[: nl + 1]
            if self._long_line:
                self._long_line = False
                self.line_too_long()
                continue
            if len(line) > LINE_LIMIT:
                self.line_too_long()
                continue
            waiter = self._line_waiter
            if waiter is not None:
                self._line_waiter = None
                if not waiter.done():
                    waiter.set_result(line)
                return
            if self.closing:
                return
            self.line_received(line)

    def _flow_control(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(self._buf) > BUFFER_LIMIT:
            if not self._read_paused:
                self._read_paused = True
                transport.pause_reading()
        elif self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def discard_input(self) -> None:
        """Forget the bytes received and not yet processed (after STARTTLS, RFC 3207 4.2)."""
        self._buf.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._lost:
            self._process()

    def eof_received(self) -> bool | None:
        self._eof = True
        waiter = self._line_waiter
        if waiter is not None and not waiter.done():
            self._line_waiter = None
            waiter.set_result(b"")
        if self._task is None:
            if self._parser is not None:
                return False  # the message is incomplete: nothing to answer
            self._process()
            return False
        # answer what was sent, then close; a TLS transport cannot stay half-open
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._line_waiter is not None and not self._line_waiter.done():
            self._line_waiter.set_result(b"")
        task = self._task
        if task is not None and not self._task_keeps_running:
            task.cancel()
        for coro, _ in self._queued:
            coro.close()
        self._queued.clear()
        self._out.clear()

    # -- TLS -------------------------------------------------------------------------------------

    async def upgrade_tls(self, context: ssl.SSLContext, handshake_timeout: float) -> bool:
        """In a task: STARTTLS's handshake on this connection. False when it failed (the
        connection is then closed)."""
        transport = self.transport
        assert transport is not None
        self.flush()
        try:
            tls = await self.loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=handshake_timeout,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("STARTTLS handshake failed: %s", exc)
            transport.close()
            return False
        if tls is None:
            transport.close()
            return False
        self.transport = cast(asyncio.Transport, tls)
        return True

    def pause_reading_now(self) -> None:
        """Stop reading before a TLS upgrade: the client's handshake is for the TLS layer."""
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.pause_reading()
