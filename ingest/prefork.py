"""``mailjournal ingest --workers N``: N ingest processes on the same ports.

The parent starts N worker processes that each listen on the same ports with ``SO_REUSEPORT``
(the kernel spreads connections over them), serves the merged metrics of all of them on the one
metrics port, restarts a worker that dies (:mod:`mailjournal.restart`), and on SIGTERM forwards it
and waits for every worker's graceful stop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.context import SpawnContext, SpawnProcess
from types import FrameType

from ingest.process import quiet_aiosmtpd, run_process
from mailjournal.config import Config
from mailjournal.exits import EXIT_FATAL, EXIT_OK
from mailjournal.logs import setup_logging
from mailjournal.restart import Backoff, RestartLoop, Restarts

log = logging.getLogger("ingest")

RESTART_BACKOFF = Backoff((1.0, 2.0, 5.0, 10.0))


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


def _worker_main(config: Config) -> None:
    setup_logging(config.logging, stage="ingest")
    quiet_aiosmtpd(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    sys.exit(run_process(config, serve_metrics_here=False))


class _Worker:
    """Worker ``index``: a spawned process, replaced by a new one on each restart."""

    def __init__(self, index: int, config: Config, mp: SpawnContext):
        self.index = index
        self.config = config
        self.mp = mp
        self.proc: SpawnProcess | None = None
        self.pid: int | None = None  # of the latest process, for the log lines
        self.restarts = Restarts(RESTART_BACKOFF)

    def __str__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def start(self) -> None:
        proc = self.mp.Process(
            target=_worker_main, args=(self.config,), name=f"ingest-worker-{self.index}"
        )
        proc.start()
        self.proc, self.pid = proc, proc.pid
        log.info("started worker %d (pid %d)", self.index, proc.pid)

    def poll(self) -> int | None:
        from prometheus_client import multiprocess

        proc = self.proc
        if proc is None or proc.is_alive():
            return None
        multiprocess.mark_process_dead(proc.pid)
        self.proc = None
        return proc.exitcode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()


def run_workers(config: Config, n: int) -> int:
    from mailjournal.metrics import cleanup_multiprocess, prepare_multiprocess

    prepare_multiprocess()
    from prometheus_client import multiprocess

    from mailjournal.metrics import serve_metrics

    config, held = _pin_ports(config)
    ports = {lst.name: lst.port for lst in config.ingest.listeners}
    mp = multiprocessing.get_context("spawn")
    workers = [_Worker(i, config, mp) for i in range(n)]
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    restarts = RestartLoop(workers, log)
    restarts.start_all()
    metrics_server = serve_metrics(
        config.metrics.host,
        config.metrics.ingest_port,
        lambda: all(w.alive() for w in workers),
    )
    log.info("ingest: %d workers on ports %s", n, ports)
    rc = EXIT_OK
    try:
        restarts.run(lambda: stopping)
    finally:
        procs = [w.proc for w in workers if w.proc is not None]
        for proc in procs:
            if proc.is_alive():
                assert proc.pid is not None
                os.kill(proc.pid, signal.SIGTERM)
        grace = config.ingest.data_timeout_seconds + config.ingest.kafka_ack_timeout_seconds + 10
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
                rc = EXIT_FATAL
            elif proc.exitcode != 0:
                rc = EXIT_FATAL
            multiprocess.mark_process_dead(proc.pid)
        if metrics_server is not None:
            metrics_server.stop()
        for s in held:
            s.close()
        cleanup_multiprocess()
    return rc
