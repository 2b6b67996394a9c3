"""``mailjournal ingest --config FILE [--workers N]`` and ``mailjournal ingest hash-password``.

With ``--workers N`` (N > 1) the parent starts N worker processes that each listen on the same
ports with ``SO_REUSEPORT`` (the kernel spreads connections over them), serves the merged
metrics of all of them on the one metrics port, restarts a worker that dies, and on SIGTERM
forwards it and waits for every worker's graceful stop.

SIGTERM (or SIGINT) in a worker: stop accepting, let the messages in flight finish and get their
reply, answer idle sessions ``421``, flush the producer, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from types import FrameType
from typing import Any

from mailjournal.config import Config, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_OK
from mailjournal.logs import setup_logging

log = logging.getLogger("ingest")

RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("MAILJOURNAL_CONFIG"),
        help="configuration file (default: $MAILJOURNAL_CONFIG)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the listeners' ports via SO_REUSEPORT (default 1)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    hp = sub.add_parser(
        "hash-password",
        help="print a 'user:hash' line for a listener's credentials_file",
        description="print a 'user:hash' line (salted scrypt) for a listener's credentials_file",
    )
    hp.add_argument("--user", required=True)
    hp.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (one line)"
    )


def _quiet_aiosmtpd(config: Config) -> None:
    # aiosmtpd logs every command and connection at INFO: only at DEBUG is that wanted
    if config.logging.level != "DEBUG":
        for name in ("mail.log", "mail.debug"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _hash_password(args: argparse.Namespace) -> int:
    from ingest.auth import hash_password

    if ":" in args.user:
        print("a user name cannot contain ':'", file=sys.stderr)
        return EXIT_CONFIG
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    if not password:
        print("empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.user}:{hash_password(password)}")
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "hash-password":
        return _hash_password(args)
    if not args.config:
        print("mailjournal ingest: --config FILE is required", file=sys.stderr)
        return EXIT_CONFIG
    config = load_config_or_report(args.config, stages=("ingest",))
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.logging, stage="ingest")
    _quiet_aiosmtpd(config)
    if not config.ingest.listeners:
        log.error("no [[ingest.listeners]] in %s", args.config)
        return EXIT_CONFIG
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers == 1:
        return _run(run_worker(config, serve_metrics_here=True))
    return run_workers(config, args.workers)


# -- one worker -----------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, int]) -> int:
    from ingest.server import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


async def run_worker(config: Config, *, serve_metrics_here: bool) -> int:
    """Serve until SIGTERM/SIGINT (or a fatal producer error); returns the exit code."""
    from ingest import loopmon
    from ingest.server import IngestServer
    from mailjournal.metrics import READY, serve_metrics

    server = IngestServer(config)
    await server.start()
    metrics_server = (
        serve_metrics(config.metrics.host, config.metrics.ingest_port, server.ready)
        if serve_metrics_here
        else None
    )
    READY.set(1)
    loop = asyncio.get_running_loop()
    lag_monitor = loop.create_task(loopmon.monitor())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ingest ready (pid %d), ports %s", os.getpid(), server.ports)
    rc = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if server.publisher is not None and server.publisher.fatal is not None:
            log.critical("Kafka producer failed for good; stopping so that we get restarted")
            rc = 1
            break
    READY.set(0)
    lag_monitor.cancel()
    log.info("stopping: no new connections; finishing messages in flight")
    left = await server.shutdown()
    if left:
        log.error("%d events were not flushed to Kafka at shutdown", left)
        rc = rc or 1
    if metrics_server is not None:
        metrics_server.stop()
    log.info("stopped")
    return rc


# -- N workers ------------------------------------------------------------------------------------


def _pin_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """Give listeners configured with port 0 a concrete port that every worker can bind with
    SO_REUSEPORT; the returned sockets hold the ports (bound, not listening: they get no
    connections) for the parent's lifetime."""
    held: list[socket.socket] = []
    listeners = []
    for lst in config.ingest.listeners:
        if lst.port == 0:
            info = socket.getaddrinfo(lst.host, 0, type=socket.SOCK_STREAM)[0]
            s = socket.socket(info[0], socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(info[4])
            held.append(s)
            lst = lst.model_copy(update={"port": s.getsockname()[1]})
        listeners.append(lst)
    ingest = config.ingest.model_copy(update={"listeners": listeners})
    return config.model_copy(update={"ingest": ingest}), held


def _worker_process(config: Config) -> None:
    setup_logging(config.logging, stage="ingest")
    _quiet_aiosmtpd(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    sys.exit(_run(run_worker(config, serve_metrics_here=False)))


def run_workers(config: Config, n: int) -> int:
    from mailjournal.metrics import cleanup_multiprocess, prepare_multiprocess

    prepare_multiprocess()
    from prometheus_client import multiprocess

    from mailjournal.metrics import serve_metrics

    config, held = _pin_ports(config)
    ports = {lst.name: lst.port for lst in config.ingest.listeners}
    mp = multiprocessing.get_context("spawn")
    workers: list[Any] = [None] * n
    restarts = [0] * n
    next_start = [0.0] * n
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(i: int) -> None:
        proc = mp.Process(target=_worker_process, args=(config,), name=f"ingest-worker-{i}")
        proc.start()
        workers[i] = proc
        log.info("started worker %d (pid %d)", i, proc.pid)

    for i in range(n):
        start(i)
    metrics_server = serve_metrics(
        config.metrics.host,
        config.metrics.ingest_port,
        lambda: all(w is not None and w.is_alive() for w in workers),
    )
    log.info("ingest: %d workers on ports %s", n, ports)
    rc = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(workers):
                if proc is not None and not proc.is_alive() and not stopping:
                    multiprocess.mark_process_dead(proc.pid)
                    delay = RESTART_BACKOFF_SECONDS[
                        min(restarts[i], len(RESTART_BACKOFF_SECONDS) - 1)
                    ]
                    log.error(
                        "worker %d (pid %d) exited with %s; restarting in %.0fs",
                        i,
                        proc.pid,
                        proc.exitcode,
                        delay,
                    )
                    workers[i] = None
                    restarts[i] += 1
                    next_start[i] = time.monotonic() + delay
                if workers[i] is None and not stopping and time.monotonic() >= next_start[i]:
                    start(i)
    finally:
        for proc in workers:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        grace = config.ingest.data_timeout_seconds + config.ingest.kafka_ack_timeout_seconds + 10
        deadline = time.monotonic() + grace
        for proc in workers:
            if proc is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
                rc = 1
            elif proc.exitcode != 0:
                rc = 1
            multiprocess.mark_process_dead(proc.pid)
        if metrics_server is not None:
            metrics_server.stop()
        for s in held:
            s.close()
        cleanup_multiprocess()
    return rc
