"""A stage on the tiered consumer as a process: its topics checked before it starts, SIGTERM
and SIGINT a graceful stop, ``/metrics`` and the probes served while it runs."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

from confluent_kafka import KafkaException

from mailjournal.config import Config
from mailjournal.consumer.handler import Handler
from mailjournal.consumer.loop import TieredConsumer
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK
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


class StageFatal(Exception):
    """A stage cannot go on (fatal Kafka error, fenced by a newer instance): it exits with
    ``EXIT_FATAL`` and its supervisor starts a fresh instance from the committed state."""


class Runnable(Protocol):
    def run(self) -> int | None: ...

    def stop(self) -> None: ...


def run_until_stopped(
    worker: Runnable, *, name: str, ready: Callable[[], bool], host: str, port: int
) -> int:
    """Run ``worker`` until SIGTERM/SIGINT (a graceful stop: the work in flight is finished),
    serving its metrics and probes on ``port`` (0: none). The exit status is what ``run``
    returns (0 when it returns nothing), ``EXIT_FATAL`` when it raises :class:`StageFatal`."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: %s received, stopping", name, signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_metrics(host, port, ready=ready)
    try:
        status = worker.run()
    except StageFatal as exc:
        log.error("%s: fatal: %s; exiting so that a fresh instance takes over", name, exc)
        return EXIT_FATAL
    finally:
        if server is not None:
            server.stop()
    status = EXIT_OK if status is None else status
    if status == EXIT_OK:
        log.info("%s: stopped", name)
    return status


def serve(config: Config, handler: Handler, *, port: int) -> int:
    """The stage's process: its topics checked (input, retry tiers, outcomes, dead letters),
    then the tiered consumer run with ``handler`` until SIGTERM/SIGINT. Exit status per
    :mod:`mailjournal.exits`: 2 when a topic is missing (``topics ensure`` creates it; restarting
    would not), 1 when Kafka cannot be asked."""
    topics = config.kafka.topics
    settings = handler.settings
    wanted = [
        settings.topic,
        *settings.tiers.topics,
        topics.outcomes.name,
        topics.dead_letters.name,
    ]
    try:
        missing = missing_topics(config, wanted, role=f"{handler.name}-admin")
    except KafkaException as exc:
        log.error("%s: Kafka at %s: %s", handler.name, config.kafka.bootstrap_servers, exc)
        return EXIT_FATAL
    if missing:
        log.error(
            "%s: missing topics %s; create them with `mailjournal topics ensure`",
            handler.name,
            ", ".join(missing),
        )
        return EXIT_CONFIG
    worker = TieredConsumer(config, handler)
    return run_until_stopped(
        worker, name=worker.name, ready=lambda: worker.ready, host=config.metrics.host, port=port
    )
