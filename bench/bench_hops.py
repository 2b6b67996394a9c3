"""The SMTP hop floor: what one SMTP hop costs in Python per message when it does nothing else.

Beside the Kafka floor (``bench/bench_floor.py``), this is the other part of a stage that no
code on this design can remove: the pipeline takes each message over three SMTP hops written in
Python, one in (ingest) and two out (delivery sends the journal copy, the relay the original).

* ``receive``: a bare ``asyncio.Protocol`` on uvloop (as ingest runs) answers ``smtp-source``
  with canned replies: no parsing beyond finding line ends and the end of DATA, no checks, no
  policy, no Kafka. Driven as ``make bench`` drives ingest (``--sessions`` sessions, a new
  connection per message); its process CPU per message is read from ``/proc``.
* ``send``: one thread sends prebuilt messages over one reused connection to ``smtp-sink``, the
  command group pipelined (``MAIL``, ``RCPT``, ``DATA``), then the body, reading only the reply
  codes; its CPU per message is the process's own (``getrusage``). ``send-timeout`` is the
  same with a timeout on the socket, as every real client has (CPython then polls before each
  call). ``send-smtplib`` does the same through ``smtplib.SMTP.sendmail`` (no pipelining), the
  library delivery and the relay build on; ``send-client`` through the product's own
  :class:`~mailjournal.smtp.client.SmtpClient` (pipelined, one reused session, one thread): what
  a send costs delivery and the relay before their threads and their Kafka work.

Every figure is the least a Python stage pays for its hop; a stage's measured CPU less its
Kafka floor role and these is its own code.

    .venv/bin/python -m bench.bench_hops [--sizes 1024,102400] [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing as mp
import smtplib
import socket
from collections.abc import Callable
from typing import Any

from bench.common import RECIPIENT, SENDER, cpu_seconds, proc_cpu, run_source, smtp_sink
from devtools.kafka_local import free_ports

HOPS = ("receive", "send", "send-timeout", "send-smtplib", "send-client")


class _Bare(asyncio.Protocol):
    """Canned replies to smtp-source's dialogue: a command per line; DATA gathered into one
    buffer (a stage must hold the message), each chunk searched for ``CRLF.CRLF`` together with
    the four octets before it."""

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.buf = b""
        self.body: bytearray | None = None  # inside DATA
        transport.write(b"220 floor ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        out: list[bytes] = []
        buf = self._data(chunk, out) if self.body is not None else self.buf + chunk
        while buf and self.body is None:
            eol = buf.find(b"\r\n")
            if eol < 0:
                break
            verb = buf[:4].upper()
            buf = buf[eol + 2 :]
            if verb == b"DATA":
                self.body = bytearray(b"\r\n")  # the end may follow an empty body
                out.append(b"354 go\r\n")
                buf = self._data(buf, out) if buf else b""
            elif verb == b"EHLO":
                out.append(b"250-floor\r\n250 PIPELINING\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                self.t.write(b"".join(out))
                self.t.close()
                return
            else:
                out.append(b"250 ok\r\n")
        self.buf = buf
        if out:
            self.t.write(b"".join(out))

    def _data(self, chunk: bytes, out: list[bytes]) -> bytes:
        """Take a chunk of DATA; what follows its end (pipelined commands) is returned."""
        body = self.body
        assert body is not None
        start = max(0, len(body) - 4)
        body += chunk
        end = body.find(b"\r\n.\r\n", start)
        if end < 0:
            return b""
        rest = bytes(body[end + 5 :])
        self.body = None
        out.append(b"250 queued\r\n")
        return rest


def _serve(port: int, ready: Any) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Bare, "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def receive_floor(size: int, count: int, sessions: int = 20) -> dict[str, Any]:
    """CPU ms per message of the bare receiver under ``smtp-source``."""
    (port,) = free_ports(1)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_serve, args=(port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise TimeoutError("the bare receiver did not start")
        run_source(port, size, min(count, 2000), sessions)  # warm-up, unmeasured
        pid = proc.pid
        assert pid is not None  # started
        c0 = proc_cpu(pid)
        seconds = run_source(port, size, count, sessions, timeout=600)
        cpu_s = proc_cpu(pid) - c0
    finally:
        proc.kill()
        proc.join(10)
    return {"hop": "receive", "size": size, "count": count, "rate": count / seconds, "cpu_s": cpu_s}


def _message(size: int) -> bytes:
    """A message of about ``size`` octets, in lines of 76, already dot-safe."""
    head = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: floor\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def _replies(f: Any, n: int) -> None:
    """Read ``n`` replies (multi-line ones whole), failing on anything but 2xx/3xx."""
    for _ in range(n):
        while True:
            line = f.readline()
            if not line or line[:1] not in b"23":
                raise RuntimeError(f"smtp-sink answered {line!r}")
            if line[3:4] != b"-":
                break


def _send_raw(port: int, size: int, count: int, timeout: float | None = None) -> float:
    body = _message(size) + b".\r\n"
    group = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as s, s.makefile("rb") as f:
        s.settimeout(timeout)
        _replies(f, 1)
        s.sendall(b"EHLO floor\r\n")
        _replies(f, 1)
        c0 = cpu_seconds()
        for _ in range(count):
            s.sendall(group)
            _replies(f, 3)
            s.sendall(body)
            _replies(f, 1)
        return cpu_seconds() - c0


def _send_smtplib(port: int, size: int, count: int) -> float:
    msg = _message(size)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="floor") as smtp:
        smtp.ehlo()
        c0 = cpu_seconds()
        for _ in range(count):
            smtp.sendmail(SENDER, [RECIPIENT], msg)
        return cpu_seconds() - c0


def _send_client(port: int, size: int, count: int) -> float:
    from mailjournal.smtp.client import SmtpClient
    from mailjournal.smtp.wire import Outgoing
    from tests.fixtures.config import make_config

    hop = {"host": "127.0.0.1", "port": port}
    client = SmtpClient(
        make_config({"delivery": {"smart_host": hop}}).delivery, local_hostname="floor"
    )
    message = Outgoing.of(_message(size))
    try:
        c0 = cpu_seconds()
        for _ in range(count):
            result = client.send(SENDER, RECIPIENT, message)
            if result.code != 250:
                raise RuntimeError(f"smtp-sink answered {result}")
        return cpu_seconds() - c0
    finally:
        client.close()


_SENDERS: dict[str, Callable[[int, int, int], float]] = {
    "send": _send_raw,
    # the command timeout delivery sets on its sessions (any positive value costs the same)
    "send-timeout": functools.partial(_send_raw, timeout=300.0),
    "send-smtplib": _send_smtplib,
    "send-client": _send_client,
}


def _send_job(hop: str, port: int, size: int, count: int, out: Any) -> None:
    send = _SENDERS[hop]
    send(port, size, min(count, 2000))  # warm-up, unmeasured
    out.put(send(port, size, count))


def send_floor(hop: str, size: int, count: int) -> dict[str, Any]:
    """CPU ms per message of one sender to ``smtp-sink``, in a process of its own."""
    if hop not in HOPS[1:]:
        raise ValueError(f"hop must be one of {HOPS[1:]}, not {hop!r}")
    (port,) = free_ports(1)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with smtp_sink(port):
        proc = ctx.Process(target=_send_job, args=(hop, port, size, count, out), daemon=True)
        proc.start()
        try:
            cpu_s = out.get(timeout=600)
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return {"hop": hop, "size": size, "count": count, "cpu_s": cpu_s}


def hop_point(hop: str, size: int, count: int) -> dict[str, Any]:
    row = receive_floor(size, count) if hop == "receive" else send_floor(hop, size, count)
    row["cpu_ms_per_msg"] = round(row["cpu_s"] / count * 1000, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,102400,1048576")
    parser.add_argument("--count", type=int, default=20000, help="messages per 1 KB point")
    parser.add_argument("--hops", default=",".join(HOPS))
    args = parser.parse_args(argv)
    for size in (int(s) for s in args.sizes.split(",")):
        count = max(500, min(args.count, args.count * 1024 // size * 4))
        for hop in args.hops.split(","):
            row = hop_point(hop, size, count)
            print(
                f"{hop:>13} {size // 1024:>5} KB  {count:>6} msgs  "
                f"CPU {row['cpu_ms_per_msg']:.3f} ms/msg",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
