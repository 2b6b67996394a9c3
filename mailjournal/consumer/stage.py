"""A stage on the tiered consumer as a process: its topics checked before it starts, SIGTERM
and SIGINT a graceful stop, ``/metrics`` and the probes served while it runs."""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from types import FrameType

from mailjournal.config import Config
from mailjournal.consumer.loop import TieredConsumer
from mailjournal.kafka import make_admin
from mailjournal.metrics import serve_metrics

log = logging.getLogger(__name__)


def missing_topics(
    config: Config, wanted: Sequence[str], *, role: str, timeout: float = 30.0
) -> list[str]:
    """Those of ``wanted`` that do not exist (``mailjournal topics ensure`` creates them);
    ``KafkaException`` when Kafka cannot be asked."""
    existing = make_admin(config, role=role).list_topics(timeout=timeout).topics
    return [t for t in wanted if t not in existing]


def run_until_stopped(worker: TieredConsumer, *, host: str, port: int) -> int:
    """Run ``worker`` until SIGTERM/SIGINT, serving its metrics on ``port`` (0: none); the
    worker's result (0 after a graceful stop, 1 after a fatal Kafka error)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: %s received, stopping", worker.name, signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_metrics(host, port, ready=lambda: worker.ready)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.stop()
