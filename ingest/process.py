"""One ingest process: serve the listeners until SIGTERM/SIGINT or a fatal producer error.

SIGTERM (or SIGINT): stop accepting, let the messages in flight finish and get their reply,
answer idle sessions ``421``, flush the producer, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from mailjournal.config import Config
from mailjournal.exits import EXIT_FATAL, EXIT_OK

log = logging.getLogger("ingest")


def quiet_aiosmtpd(config: Config) -> None:
    # aiosmtpd's PROXY parser logs every header at INFO: only at DEBUG is that wanted
    if config.logging.level != "DEBUG":
        for name in ("mail.log", "mail.debug"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run_process(config: Config, *, serve_metrics_here: bool) -> int:
    """Serve on ingest's own event loop; returns the exit code. ``serve_metrics_here``: this
    process serves the metrics port (False in a worker of ``--workers N``: the parent does)."""
    from ingest.server import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(serve(config, serve_metrics_here=serve_metrics_here))


async def serve(config: Config, *, serve_metrics_here: bool) -> int:
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
    rc = EXIT_OK
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if server.publisher is not None and server.publisher.fatal is not None:
            log.critical("Kafka producer failed for good; stopping so that we get restarted")
            rc = EXIT_FATAL
            break
    READY.set(0)
    lag_monitor.cancel()
    log.info("stopping: no new connections; finishing messages in flight")
    left = await server.shutdown()
    if left:
        log.error("%d events were not flushed to Kafka at shutdown", left)
        rc = rc or EXIT_FATAL
    if metrics_server is not None:
        metrics_server.stop()
    log.info("stopped")
    return rc
