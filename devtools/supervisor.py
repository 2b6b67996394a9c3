"""``mailjournal run``: the whole pipeline on one machine.

A small supervisor: optionally starts the local real Kafka and a capture SMTP server (the smart
host of the example config), ensures the topics, then runs one process per stage, restarts a stage
that dies (with backoff), forwards SIGINT/SIGTERM, and stops everything it started on the way out.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from devtools.ready import ReadyAnnouncer, probes
from mailjournal.config import Config, file_problems, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK
from mailjournal.restart import Backoff, RestartLoop, Restarts
from mailjournal.stamp import create_key

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from devtools.kafka_local import KafkaLocal

log = logging.getLogger("mailjournal.run")

STAGES = ("deliver", "journal", "ingest")  # start order: consumers first, the front door last
# a stage that ran a minute is healthy again: its next crash waits the first delay
RESTART_BACKOFF = Backoff((1.0, 2.0, 5.0, 10.0, 30.0), healthy_after=60.0)
STOP_GRACE_SECONDS = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: Restarts = field(default_factory=lambda: Restarts(RESTART_BACKOFF))

    def __str__(self) -> str:
        return self.name

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, deadline: float) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
            self.proc.kill()
            self.proc.wait()


def _stage_argv(stage: str, config_path: Path, env: dict[str, str]) -> list[str]:
    argv = [sys.executable, "-m", "mailjournal", stage, "--config", str(config_path)]
    if stage == "journal" and not env.get("MAILJOURNAL_INSTANCE_ID"):
        # the same transactional id for every restart of this run's worker: the new process's
        # init_transactions fences a zombie and settles the transaction a crash left open at
        # once, instead of leaving it to the coordinator's timeout (and read_committed readers
        # stalled behind it); unique per supervisor, so two runs on one host never fence each
        # other
        argv += ["--instance-id", f"{socket.gethostname()}-run{os.getpid()}"]
    return argv


def banner(cfg: Config, capture: Path | None) -> str:
    lines = ["", "mailjournal is running."]
    for lst in cfg.ingest.listeners:
        lines.append(f"  send mail to   {lst.host}:{lst.port}  (listener {lst.name!r}, {lst.role})")
    domain = cfg.organization.accepted_domains[0]
    j = cfg.journal
    if j.inbound.active:
        lines.append(
            f"  inbound:  external sender -> someone@{domain}  ==> journal {j.inbound.address or '-'}"
            f" (NDRs to {j.inbound.ndr_address})"
        )
    if j.outbound.active:
        lines.append(
            f"  outbound: someone@{domain} from a trusted network -> external  ==> journal "
            f"{j.outbound.address or '-'} (NDRs to {j.outbound.ndr_address})"
        )
    for d in ("inbound", "outbound"):
        attr = j.direction(d).recipient_attribute
        if attr and j.direction(d).active:
            where = cfg.directory.file.path if cfg.directory.file else cfg.directory.backend
            lines.append(f"  per-recipient ({d}): directory attribute {attr!r} from {where}")
    sh = cfg.delivery.smart_host
    lines.append(f"  journal copies go to the smart host {sh.host}:{sh.port}")
    if capture is not None:
        lines.append(f"  ... which files them in Maildirs under {capture}/<recipient>/new/")
    lines.append("  try:  .venv/bin/mailjournal send-test   (or swaks, see README)")
    lines.append("  Ctrl-C stops everything.")
    return "\n".join(lines) + "\n"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--local-kafka",
        metavar="DIR",
        help="start a local real Kafka (one broker) in DIR for the run, and stop it after",
    )
    parser.add_argument(
        "--embedded-kafka",
        action="store_true",
        help="zero-install demo: librdkafka's in-process mock cluster (NOTHING IS DURABLE)",
    )
    parser.add_argument(
        "--capture",
        metavar="MAILDIR",
        help="also run a capture SMTP server on the smart host's address, filing into MAILDIR",
    )
    parser.add_argument("--no-restart", action="store_true", help="exit when a stage dies")


def _bootstrap_port(bootstrap: str) -> int | None:
    first = bootstrap.split(",")[0]
    _, _, port = first.rpartition(":")
    return int(port) if port.isdigit() else None


class Supervisor:
    def __init__(self, args: argparse.Namespace, cfg: Config):
        self.args = args
        self.cfg = cfg
        self.config_path = Path(args.config).resolve()
        self.children: list[Child] = []
        self.stopping = False
        self.kafka_local: KafkaLocal | None = None
        self.mock_holder: Producer | None = None
        self.env = dict(os.environ)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("signal %d: stopping", signum)
        self.stopping = True

    def start_kafka(self) -> None:
        if self.args.embedded_kafka:
            from devtools.embedded_kafka import start_mock_cluster

            self.mock_holder, bootstrap = start_mock_cluster(self.cfg)
            print(
                "\n!!! DEMO MODE: librdkafka's in-process mock cluster. NOTHING IS DURABLE: every "
                "message is lost when this process stops. Never use this for real mail. !!!\n",
                file=sys.stderr,
                flush=True,
            )
        elif self.args.local_kafka:
            from devtools.kafka_local import KafkaLocal

            port = _bootstrap_port(self.cfg.kafka.bootstrap_servers)
            # the broker goes with us even when we are SIGKILLed: no orphaned JVM holding the port
            local = KafkaLocal(
                Path(self.args.local_kafka), brokers=1, base_port=port, die_with_parent=True
            )
            self.kafka_local = local
            bootstrap = local.up()
            log.info("local Kafka at %s", bootstrap)
        else:
            return
        self.env["MAILJOURNAL_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
        self.cfg = self.cfg.model_copy(
            update={"kafka": self.cfg.kafka.model_copy(update={"bootstrap_servers": bootstrap})}
        )

    def ensure_topics(self) -> None:
        if self.args.embedded_kafka:
            return  # the mock cluster auto-creates topics and serves no CreateTopics
        from mailjournal.topics import ensure_topics

        report = ensure_topics(self.cfg)
        log.info("topics: %s", report)

    def build_children(self) -> None:
        if self.args.capture:
            sh = self.cfg.delivery.smart_host
            self.children.append(
                Child(
                    "capture",
                    [
                        sys.executable,
                        "-m",
                        "mailjournal",
                        "capture",
                        "--listen",
                        f"{sh.host}:{sh.port}",
                        "--maildir",
                        str(Path(self.args.capture).resolve()),
                    ],
                    self.env,
                )
            )
        # inline mode: the relay forwards the originals (before ingest, like the other consumers)
        stages = _stages(self.cfg)
        for stage in stages:
            self.children.append(
                Child(stage, _stage_argv(stage, self.config_path, self.env), self.env)
            )

    def loop(self) -> int:
        restarts = RestartLoop(
            self.children, log, stop_on_config=True, restart=not self.args.no_restart
        )
        restarts.start_all()
        print(banner(self.cfg, Path(self.args.capture) if self.args.capture else None), flush=True)
        announcer = ReadyAnnouncer(
            probes(self.cfg, _stages(self.cfg)), self._pid_of, lambda line: print(line, flush=True)
        )
        announcer.start()
        try:
            rc = restarts.run(lambda: self.stopping)
        finally:
            announcer.stop()
        return EXIT_OK if rc is None else rc

    def _pid_of(self, name: str) -> int | None:
        child = next((c for c in self.children if c.name == name), None)
        return child.proc.pid if child is not None and child.alive() and child.proc else None

    def shutdown(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        # the front door first, so nothing new arrives while the rest drains
        for child in reversed(self.children):
            child.stop(deadline)
        if self.kafka_local is not None:
            log.info("stopping the local Kafka")
            self.kafka_local.down()
        self.mock_holder = None


def _stages(cfg: Config) -> tuple[str, ...]:
    """The stages of the run, in start order: the relay (inline mode) and the receipt writer
    (evidence) are consumers too, so they start before ingest."""
    stages = ("relay", *STAGES) if cfg.relays else STAGES
    return ("receipts", *stages) if cfg.evidence.enabled else stages


def preflight(cfg: Config) -> list[str]:
    """What would make a stage of the run refuse to start, found before anything starts."""
    problems = file_problems(cfg, _stages(cfg))
    if not cfg.ingest.listeners:
        problems.append("ingest.listeners: none configured (`mailjournal run` starts ingest)")
    return problems


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s run %(levelname)s %(message)s")
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logging.getLogger().setLevel(cfg.logging.level)  # the run's own lines at the stages' level
    key_file = cfg.journal.stamp_secret_file
    if cfg.journal.active and key_file is not None and create_key(key_file):
        log.info("created the loop-guard stamp key %s (32 random bytes, mode 0600)", key_file)
    evidence_key = cfg.evidence.signing_key_file
    if cfg.evidence.enabled and evidence_key is not None:
        from evidence.keys import create_key_file

        if create_key_file(evidence_key):
            log.info("created the evidence signing key %s (Ed25519, mode 0600)", evidence_key)
    problems = preflight(cfg)
    if problems:  # before Kafka or any stage starts
        print(f"{args.config}: configuration is invalid", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    sup = Supervisor(args, cfg)
    signal.signal(signal.SIGINT, sup._on_signal)
    signal.signal(signal.SIGTERM, sup._on_signal)
    try:
        sup.start_kafka()
        sup.ensure_topics()
        if sup.stopping:
            return EXIT_INTERRUPTED
        sup.build_children()
        return sup.loop()
    finally:
        sup.shutdown()
