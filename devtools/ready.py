"""One line per stage of ``mailjournal run`` when it is ready: the supervisor asks each stage's
``/readyz`` (mailjournal.metrics) and prints the first 200 of every process it started, so a
restarted stage is announced again. Stage logs below WARNING are the operator's choice
(``make run LOG_LEVEL=INFO``); these lines are the run's own."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mailjournal.config import Config

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Probe:
    name: str
    url: str


def stage_port(cfg: Config, stage: str) -> int:
    """The metrics port of a stage as ``mailjournal run`` names it (0: no endpoint)."""
    m = cfg.metrics
    ports = {
        "ingest": m.ingest_port,
        "journal": m.journal_port,
        "deliver": m.delivery_port,
        "relay": m.relay_port,
        "receipts": m.evidence_port,
    }
    return ports.get(stage, 0)


def probes(cfg: Config, stages: Iterable[str]) -> list[Probe]:
    host = "127.0.0.1" if cfg.metrics.host in ("0.0.0.0", "", "::") else cfg.metrics.host
    return [
        Probe(s, f"http://{host}:{port}/readyz") for s in stages if (port := stage_port(cfg, s))
    ]


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class ReadyAnnouncer:
    """Prints ``<stage> ready (pid N)`` once per process of each stage, on its own thread."""

    def __init__(
        self,
        stage_probes: list[Probe],
        pid_of: Callable[[str], int | None],
        say: Callable[[str], None],
    ):
        self._probes = stage_probes
        self._pid_of = pid_of
        self._say = say
        self._announced: dict[str, int] = {}  # stage -> the pid announced last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            for probe in self._probes:
                pid = self._pid_of(probe.name)
                if pid is None or self._announced.get(probe.name) == pid:
                    continue
                if is_ready(probe.url) and self._pid_of(probe.name) == pid:
                    again = " again" if probe.name in self._announced else ""
                    self._announced[probe.name] = pid
                    self._say(f"{probe.name} ready{again} (pid {pid})")
