"""Micro-benchmark of ingest's SMTP front: CPU per command and per 1 KB message, over loopback.

One ingest process (one worker: its CPU is read from ``/proc`` through psutil, so the load of
the machine shifts the rates far more than the CPU per unit) is driven by a pipelining asyncio
client (``--connections`` sessions):

- ``commands``: each session sends ``--batch`` pipelined groups of ``MAIL FROM`` / ``RCPT TO`` /
  ``RSET`` and reads their replies, over and over; no Kafka is involved (no DATA);
- ``messages``: each session sends ``MAIL``/``RCPT``/``DATA`` pipelined, the body on ``354`` and
  waits for the ``250`` after Kafka's acknowledgement (a local Kafka is started unless
  ``--bootstrap`` is given), messages of ``--size`` octets;
- ``connections``: as ``smtp-source`` does, a new connection per message and one command per
  write (banner, ``EHLO``, ``MAIL``, ``RCPT``, ``DATA``, body, ``QUIT``).

``--baseline REF`` runs the same load against ingest from ``git archive REF`` first, then against
the work tree, in one invocation (A/B; ``--rounds N`` alternates them N times).

    .venv/bin/python -m bench.bench_front [--mode commands,messages] [--seconds 5]
        [--baseline main] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import write_config  # noqa: E402
from bench.common import wait_port  # noqa: E402
from devtools.kafka_local import KafkaLocal, free_ports  # noqa: E402


@dataclass
class Result:
    target: str
    mode: str
    units: int  # commands or messages answered
    seconds: float
    cpu_s: float  # ingest process CPU over the window

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.units * 1e6 if self.units else float("nan")


def _cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@contextlib.contextmanager
def ingest_at(tree: Path, config: Path, port: int) -> Iterator[psutil.Process]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    log = config.with_suffix(".log")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailjournal", "ingest", "--config", str(config)],
            cwd=tree,
            env=env,
            stderr=out,
        )
    try:
        wait_port(port, 60)
        yield psutil.Process(proc.pid)
    except BaseException:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])  # the ingest's own story
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """``count`` final reply lines (continuation lines skipped)."""
    out: list[bytes] = []
    while len(out) < count:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            out.append(line)
    return out


async def _one_per_connection(port: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _replies(reader, 1)
    for command in (
        b"EHLO bench.example\r\n",
        b"MAIL FROM:<a@ext.example>\r\n",
        b"RCPT TO:<u@corp.example>\r\n",
        b"DATA\r\n",
        body,
        b"QUIT\r\n",
    ):
        writer.write(command)
        (reply,) = await _replies(reader, 1)
        if reply[:1] not in (b"2", b"3"):
            raise RuntimeError(f"unexpected reply: {reply!r}")
    writer.close()


async def _session(port: int, stop: float, counts: list[int], mode: str, batch: int, body: bytes):
    if mode == "connections":
        loop = asyncio.get_running_loop()
        while loop.time() < stop:
            await _one_per_connection(port, body)
            counts[0] += 1
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _replies(reader, 1)
    writer.write(b"EHLO bench.example\r\n")
    await _replies(reader, 1)
    loop = asyncio.get_running_loop()
    if mode == "commands":
        group = b"MAIL FROM:<a@ext.example>\r\nRCPT TO:<u@corp.example>\r\nRSET\r\n" * batch
        while loop.time() < stop:
            writer.write(group)
            replies = await _replies(reader, 3 * batch)
            if any(r[:1] != b"2" for r in replies):
                raise RuntimeError(f"unexpected reply: {replies[:3]!r}")
            counts[0] += 3 * batch
    else:
        head = b"MAIL FROM:<a@ext.example>\r\nRCPT TO:<u@corp.example>\r\nDATA\r\n"
        while loop.time() < stop:
            writer.write(head)
            replies = await _replies(reader, 3)
            if replies[2][:3] != b"354":
                raise RuntimeError(f"unexpected reply: {replies!r}")
            writer.write(body)
            (final,) = await _replies(reader, 1)
            if final[:3] != b"250":
                raise RuntimeError(f"unexpected reply: {final!r}")
            counts[0] += 1
    writer.write(b"QUIT\r\n")
    with contextlib.suppress(Exception):
        await _replies(reader, 1)
    writer.close()


def message_body(size: int) -> bytes:
    head = b"From: a@ext.example\r\nTo: u@corp.example\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    lines = max(0, (size - len(head)) // len(line))
    return head + line * lines + b".\r\n"


def drive(port: int, mode: str, seconds: float, connections: int, batch: int, size: int) -> int:
    async def run() -> int:
        counts = [0]
        stop = asyncio.get_running_loop().time() + seconds
        body = message_body(size)
        await asyncio.gather(
            *(_session(port, stop, counts, mode, batch, body) for _ in range(connections))
        )
        return counts[0]

    try:
        import uvloop

        return uvloop.run(run())
    except ImportError:
        return asyncio.run(run())


def measure(
    target: str, proc: psutil.Process, port: int, mode: str, args: argparse.Namespace
) -> Result:
    drive(port, mode, min(2.0, args.seconds / 2), args.connections, args.batch, args.size)
    cpu0, t0 = _cpu(proc), time.monotonic()
    units = drive(port, mode, args.seconds, args.connections, args.batch, args.size)
    elapsed, cpu = time.monotonic() - t0, _cpu(proc) - cpu0
    return Result(target, mode, units, elapsed, cpu)


def git_tree(ref: str, dest: Path) -> Path:
    from bench.run_all import git_tree as archive

    return archive(ref, dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", default="commands,messages")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--batch", type=int, default=10, help="pipelined groups per write (commands)")
    ap.add_argument("--size", type=int, default=1024, help="message size (messages)")
    ap.add_argument("--baseline", metavar="REF", help="also measure ingest from git archive REF")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the targets this many times")
    ap.add_argument("--bootstrap", help="Kafka to use (messages) instead of starting one")
    args = ap.parse_args(argv)
    modes = args.mode.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-front-"))
    kafka: KafkaLocal | None = None
    results: list[Result] = []
    try:
        targets: list[tuple[str, Path]] = [("work tree", ROOT)]
        if args.baseline:
            targets.insert(0, (args.baseline, git_tree(args.baseline, work / "baseline")))
        bootstrap = args.bootstrap or "127.0.0.1:1"
        if ("messages" in modes or "connections" in modes) and not args.bootstrap:
            kafka = KafkaLocal(work / "kafka", brokers=1, die_with_parent=True)
            bootstrap = kafka.up()
        port, metrics_port = free_ports(2)
        config = work / "ingest.toml"
        write_config(config, bootstrap, port, metrics_port, f"bench.front.{os.getpid()}")
        # RSET is a junk command (Postfix's smtpd_junk_command_limit): the load sends millions
        text = config.read_text().replace(
            "[ingest]\n", "[ingest]\njunk_command_limit = 1000000000\n"
        )
        config.write_text(text)
        if "messages" in modes or "connections" in modes:
            subprocess.run(
                [sys.executable, "-m", "mailjournal", "topics", "ensure", "--config", str(config)],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for name, tree in order:
                with ingest_at(tree, config, port) as proc:
                    for mode in modes:
                        r = measure(name, proc, port, mode, args)
                        results.append(r)
                        print(
                            f"{name:>12} {mode:>8}: {r.rate:9.0f}/s  {r.cpu_us:7.1f} CPU µs each"
                            f"  ({r.units} in {r.seconds:.1f}s, ingest CPU {r.cpu_s:.2f}s)",
                            flush=True,
                        )
        print()
        unit = {
            "commands": "command",
            "messages": f"{args.size} B message",
            "connections": f"{args.size} B message, one connection each",
        }
        print(f"| target | per | rate /s | ingest CPU µs | ({args.connections} sessions)")
        print("|---|---|---|---|")
        for name, _ in targets:
            for mode in modes:
                mine = [r for r in results if r.target == name and r.mode == mode]
                units = sum(r.units for r in mine)
                secs = sum(r.seconds for r in mine)
                cpu = sum(r.cpu_s for r in mine)
                print(f"| {name} | {unit[mode]} | {units / secs:.0f} | {cpu / units * 1e6:.1f} |")
        return 0
    finally:
        if kafka is not None:
            kafka.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
