"""A real Prometheus (Debian package) scrapes a running pipeline under a small load, evaluates the
alert rules of deploy/prometheus/, and answers every query of the rules and the dashboards.

The pipeline is ``mailjournal run`` (the three stages, and the relay for an inline listener) on
the session's Kafka broker, delivering to a capture SMTP server (the smart host and every next
hop), plus ``mailjournal audit --metrics-port`` and a second ingest instance whose Kafka is
unreachable (so the "Kafka trouble" series and alert have real data). The load covers the paths
the dashboards show: inbound, outbound and internal mail, a per-recipient journal address and an
invalid one from a file directory that is changed during the run, a refused oversized message,
an out-of-sequence command, a journal copy the archive refuses permanently (an NDR, which the NDR
mailbox refuses too: a dead letter), one it refuses temporarily (a retry), one undecodable record
on each of the messages and journal topics; and on the inline listener an original relayed at
once, one its next hop refuses for now (a relay retry), one it refuses for good (a DSN to the
sender), and one from the null sender it refuses for good (nobody to tell: a dead letter).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.kafka_local import free_ports
from mailjournal.config import Config
from mailjournal.kafka import make_producer
from tests.fixtures.config import deep_merge
from tests.fixtures.delivery import delivery_config, write_toml
from tests.fixtures.kafka import delete_topics, kafka_test_config, unique_suffix
from tests.fixtures.smtp import CaptureServer, free_port, wait_until
from tests.ops_queries import (
    ROOT,
    RULES,
    Query,
    dashboard_queries,
    metric_refs,
    rule_queries,
    scrape_config,
    selectors,
    substitute,
    without_thresholds,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
pytestmark = [pytest.mark.kafka]  # prometheus (Debian package) is installed by `make test`

DATA_TIMEOUT = 90.0  # for every query to have data, from the start of the load
SCRAPE = "1s"

# Queries that return nothing in a healthy pipeline even with their thresholds removed, because
# the event they count does not happen here (a prometheus-client counter with labels has no
# series before its first event). For these the test requires the metric family to be known to
# Prometheus from the target's HELP/TYPE lines: the stage exports it under this name.
HEALTHY_EMPTY: set[str] = set()

# Alerts the load provokes: they must be pending or firing.
PROVOKED = {
    "MailjournalIngestKafkaRefusals",  # the second ingest cannot reach Kafka
    "MailjournalJournalCopiesBounced",  # the archive refused a journal copy with 550
    "MailjournalDeadLetters",  # ... and the NDR mailbox refused its NDR; undecodable records
    "MailjournalAuditGaps",  # the undecodable records: kind "unreadable" only (asserted below)
}
# Alerts a healthy pipeline must not raise, not even as pending. (Latency, lag, retry backlog
# and NDR-rate alerts depend on this machine's load and are left out.)
MUST_BE_QUIET = {
    "MailjournalStageDown",
    "MailjournalStageMissing",
    "MailjournalStageNotReady",
    "MailjournalDirectoryOutage",
    "MailjournalAuditStale",
}

DIRECTORY = """
["alice@corp.example"]
journalAddress = "supervisor-journal@corp.example"

["mallory@corp.example"]
journalAddress = "not an address"
"""


# -- Prometheus -----------------------------------------------------------------------------------


class Prometheus:
    """``/usr/bin/prometheus`` on a free loopback port with its own TSDB directory."""

    def __init__(self, workdir: Path, jobs: dict[str, list[str]], port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self._write_config(jobs)
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self, jobs: dict[str, list[str]]) -> Path:
        """The shipped prometheus.yml as in inline mode with signed receipts (this run has an
        inline listener, so a relay, and a receipt writer), with this run's ports, a 1 s scrape and evaluation interval, and the shipped
        rules by absolute path."""
        config = scrape_config(inline=True, evidence=True)
        config["global"] = {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE}
        config["rule_files"] = [str(RULES)]
        for job in config["scrape_configs"]:
            job.pop("scrape_interval", None)
            job["static_configs"] = [{"targets": jobs[job["job_name"]]}]
        assert set(jobs) == {j["job_name"] for j in config["scrape_configs"]}
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, timeout: float = 30) -> Prometheus:
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout, "prometheus ready")
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422: the body says why
            return json.load(exc)

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- the pipeline and its load --------------------------------------------------------------------


def message(sender: str, to: str, subject: str, body: str = "hello\r\n") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{unique_suffix('ops')}@test>\r\n\r\n{body}"
    ).encode()


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    """One SMTP transaction; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        code, reply = s.mail(sender)
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = s.rcpt(rcpt)
            assert code == 250, (rcpt, reply)
        return s.data(data)


@dataclass
class Live:
    prom: Prometheus
    capture: CaptureServer
    smtp_port: int
    broken_instance: str  # the ingest without Kafka
    errors: list[str] = field(default_factory=list)


def _stage_config(
    tmp: Path, bootstrap: str, capture: CaptureServer
) -> tuple[Config, dict[str, int]]:
    # every port of the module's processes from one call: held together, so all distinct (one
    # at a time, the kernel handed out the same port twice and two stages fought over it)
    names = ("smtp", "relay_smtp", "ingest", "journal", "delivery", "relay", "evidence")
    extra = ("dead_smtp", "dead_metrics", "dead_kafka", "audit", "prometheus")
    ports = dict(zip(names + extra, free_ports(len(names) + len(extra)), strict=True))
    directory = tmp / "directory.toml"
    directory.write_text(DIRECTORY)
    suffix = unique_suffix("ops-prometheus")
    base = kafka_test_config(bootstrap, suffix)
    hop = {"host": "127.0.0.1", "port": capture.port}
    overrides: dict[str, Any] = {
        "organization": {"trusted_networks": ["127.0.0.0/8"]},  # outbound from the test client
        "journal": {"inbound": {"recipient_attribute": "journalAddress"}},
        "directory": {
            "backend": "file",
            "file": {"path": str(directory)},
            "cache_ttl_seconds": 1,
            "negative_ttl_seconds": 1,
        },
        "ingest": {
            "listeners": [
                {"name": "mx", "host": "127.0.0.1", "port": ports["smtp"]},
                # inline: `mailjournal run` starts the relay for it
                {
                    "name": "filter",
                    "host": "127.0.0.1",
                    "port": ports["relay_smtp"],
                    "role": "relay",
                    "relay": True,
                },
            ],
            "max_message_size": 64 * 1024,
            "kafka_ack_timeout_seconds": 10,
        },
        "relay": {
            "inbound": hop,
            "outbound": hop,
            "retry_delays_seconds": [0.5, 1.0],
            "expiry_seconds": 60,
            "dsn_from": "MAILER-DAEMON@corp.example",
        },
        # signed receipts: `mailjournal run` starts the receipt writer (its panels and alerts)
        "evidence": {
            "enabled": True,
            "signing_key_file": str(tmp / "evidence.key"),
            "checkpoint_interval_seconds": 1,
            "batch_max_ms": 50,
            "sync_interval_seconds": 0.2,
        },
        "kafka": {
            "properties": {"statistics.interval.ms": 1000},
            "relay_group": f"mailjournal-relay.{suffix}",
            "evidence_group": f"mailjournal-evidence.{suffix}",
            "topics": {
                "relay_retry": {"name": f"mailjournal.relay.retry.{suffix}", "partitions": 3},
                "receipts": {"name": f"mailjournal.receipts.{suffix}", "partitions": 3},
                "evidence": {"name": f"mailjournal.evidence.{suffix}"},
                "receipts_state": {"name": f"mailjournal.receipts-state.{suffix}"},
            },
        },
        "metrics": {
            "host": "127.0.0.1",
            "ingest_port": ports["ingest"],
            "journal_port": ports["journal"],
            "delivery_port": ports["delivery"],
            "relay_port": ports["relay"],
            "evidence_port": ports["evidence"],
        },
    }
    return delivery_config(base, capture.port, overrides), ports


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("ops-prometheus")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()
    capture = CaptureServer().start()
    prom: Prometheus | None = None
    config: Config | None = None
    try:
        config, ports = _stage_config(tmp, kafka_bootstrap, capture)
        config_file = write_toml(config, tmp / "mailjournal.toml")

        # an ingest whose Kafka is gone: nothing listens on its bootstrap port
        dead = {"smtp": ports["dead_smtp"], "metrics": ports["dead_metrics"]}
        broken = deep_merge(
            config.model_dump(mode="json", exclude_none=True),
            {
                "kafka": {"bootstrap_servers": f"127.0.0.1:{ports['dead_kafka']}"},
                "ingest": {
                    "listeners": [{"name": "mx", "host": "127.0.0.1", "port": dead["smtp"]}],
                    "kafka_ack_timeout_seconds": 2,
                },
                "metrics": {"ingest_port": dead["metrics"]},
            },
        )
        broken_file = write_toml(Config.model_validate(broken), tmp / "broken-ingest.toml")
        audit_port = ports["audit"]

        def spawn(name: str, *args: str) -> None:
            with open(tmp / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "mailjournal", *args],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

        # Prometheus first, so that it sees counters appear
        host = "127.0.0.1"
        prom = Prometheus(
            tmp,
            {
                "mailjournal-ingest": [f"{host}:{ports['ingest']}", f"{host}:{dead['metrics']}"],
                "mailjournal-journal": [f"{host}:{ports['journal']}"],
                "mailjournal-delivery": [f"{host}:{ports['delivery']}"],
                "mailjournal-relay": [f"{host}:{ports['relay']}"],
                "mailjournal-evidence": [f"{host}:{ports['evidence']}"],
                "mailjournal-audit": [f"{host}:{audit_port}"],
            },
            port=ports["prometheus"],
        ).start()
        spawn("run", "run", "--config", str(config_file), "--no-restart")
        spawn("broken-ingest", "ingest", "--config", str(broken_file))

        def ready() -> bool:
            for p in procs:
                assert p.poll() is None, f"a process exited with {p.returncode}; logs in {tmp}"
            stages = ("ingest", "journal", "delivery", "relay", "evidence")
            for port in (*(ports[s] for s in stages), dead["metrics"]):
                try:
                    with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1):
                        pass
                except OSError:
                    return False
            return True

        wait_until(ready, 90, "the stages' /readyz")
        spawn(
            "audit",
            "audit",
            "--config",
            str(config_file),
            "--since",
            "1h",
            "--metrics-port",
            str(audit_port),
            "--interval",
            "5",
        )

        live = Live(prom, capture, ports["smtp"], f"{host}:{dead['metrics']}")
        inbound, outbound = "journal-in@corp.example", "journal-out@corp.example"
        # the first inbound journal copy is refused for good (NDR), and so is its NDR (dead
        # letter); the first outbound one is refused for now (retry tier, then delivered)
        capture.script(inbound, "550 5.1.1 archive mailbox unavailable")
        capture.script("journal-ndr-in@corp.example", "550 5.1.1 no such user")
        capture.script(outbound, "451 4.3.0 archive busy, try later")
        # the relay's next hops (the same capture server): one original deferred once, two
        # refused for good
        capture.script("relay-later@corp.example", "451 4.3.0 next hop busy, try later")
        capture.always("relay-gone@corp.example", "550 5.1.1 no such user")

        def expect(code: int, reply: tuple[int, bytes], what: str) -> None:
            if reply[0] != code:
                live.errors.append(f"{what}: expected {code}, got {reply}")

        smtp = ports["smtp"]
        ext = "sender@ext.example"
        expect(250, send(smtp, ext, ["bob@corp.example"], message(ext, "bob", "in")), "inbound")
        expect(
            250,
            send(smtp, "bob@corp.example", ["x@ext.example"], message("bob", "x", "out")),
            "outbound",
        )
        expect(
            250,
            send(
                smtp,
                ext,
                ["alice@corp.example", "mallory@corp.example"],
                message(ext, "alice, mallory", "per-recipient"),
            ),
            "per-recipient",
        )
        expect(
            250,
            send(smtp, "bob@corp.example", ["carol@corp.example"], message("bob", "c", "int")),
            "internal",
        )
        big = message(ext, "bob", "big", ("x" * 500 + "\r\n") * 160)
        expect(552, send(smtp, ext, ["bob@corp.example"], big), "oversized")
        with smtplib.SMTP(host, smtp, timeout=30) as s:
            s.ehlo("client.test")
            code, _ = s.docmd("RCPT", "TO:<bob@corp.example>")  # before MAIL
            if code != 503:
                live.errors.append(f"RCPT before MAIL: got {code}")
        inline = ports["relay_smtp"]
        for sender, rcpt, what in (
            (ext, "relayed@corp.example", "relayed at once"),
            (ext, "relay-later@corp.example", "relay retried"),
            (ext, "relay-gone@corp.example", "relay DSN"),  # the DSN goes to ext
            ("", "relay-gone@corp.example", "relay dead letter"),  # null sender: no DSN
        ):
            data = message(sender or "mailer-daemon@ext.example", rcpt, what)
            expect(250, send(inline, sender, [rcpt], data), what)
        producer = make_producer(config, role="test")
        producer.produce(config.kafka.topics.messages.name, b"not an event", b"junk")
        producer.produce(config.kafka.topics.journal.name, b"not a copy", b"junk")
        assert producer.flush(30) == 0
        # a changed directory file is reloaded while the worker runs
        (tmp / "directory.toml").write_text(DIRECTORY + '\n["dave@corp.example"]\n')

        def load(port: int, code: int, pause: float, what: str) -> None:
            """One message after another until the end of the module; every reply must be
            ``code`` (a failure is recorded, not raised: this runs in a thread)."""
            n = 0
            while not stop.is_set():
                n += 1
                rcpt = "alice@corp.example" if n % 4 == 0 else "bob@corp.example"
                try:
                    expect(code, send(port, ext, [rcpt], message(ext, rcpt, f"{what} {n}")), what)
                except Exception as exc:
                    live.errors.append(f"{what} {n}: {exc!r}")
                stop.wait(pause)

        steady_load = threading.Thread(target=load, args=(smtp, 250, 0.5, "load"))
        kafka_down_load = threading.Thread(target=load, args=(dead["smtp"], 451, 1.0, "no Kafka"))
        for thread in (steady_load, kafka_down_load):
            thread.daemon = True
            thread.start()
            threads.append(thread)
        yield live
    finally:
        stop.set()
        for t in threads:
            t.join(70)
        for p in reversed(procs):
            stop_process(p, 60)
        if prom is not None:
            prom.stop()
        capture.stop()
        if config is not None:  # like the kafka_config fixture: leave the shared broker tidy
            delete_topics(config)


# -- the checks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    source: str
    expr: str  # what must return data
    of: str  # the query it comes from


def checks() -> list[Check]:
    """Every dashboard query as Grafana runs it; every alert condition without its thresholds
    (the condition itself is false in a healthy pipeline, what it measures is not); and every
    metric selector of both on its own, so that each part of an "or" has data too."""
    out: list[Check] = []
    queries: list[Query] = dashboard_queries() + rule_queries()
    for q in queries:
        expr = substitute(q.expr)
        probe = without_thresholds(expr) if q.alert else expr
        out.append(Check(q.source, probe, expr))
        for m in selectors(expr):
            out.append(Check(f"{q.source} selector", m, expr))
    return out


def _known_family(prom: Prometheus, expr: str) -> bool:
    """For HEALTHY_EMPTY metrics: Prometheus has scraped their HELP/TYPE from a target."""
    names = {name for name, _ in metric_refs(expr)}
    for name in names:
        if name not in HEALTHY_EMPTY:
            return False
        meta = prom.api("targets/metadata", metric=name)
        if not meta.get("data"):
            return False
    return bool(names)


def test_every_query_parses_and_returns_data(live: Live) -> None:
    prom = live.prom
    all_checks = checks()
    # every query parses and evaluates, whatever the data
    for check in {c.of for c in all_checks}:
        res = prom.query(check)
        assert res["status"] == "success", (check, res)

    pending = {c.expr: c for c in all_checks}
    started = time.monotonic()
    while pending and time.monotonic() < started + DATA_TIMEOUT:
        for expr in list(pending):
            if prom.query(expr)["data"]["result"] or _known_family(prom, expr):
                del pending[expr]
        if pending:
            time.sleep(1)  # the poll interval of this deadline loop
    print(f"{len(all_checks)} checks had data after {time.monotonic() - started:.1f}s")
    missing = {c.source: c.expr for c in pending.values()}
    assert live.errors == []
    assert not missing, "no data for:\n" + "\n".join(f"  {k}: {v}" for k, v in missing.items())


def test_provoked_alerts_fire_and_a_healthy_pipeline_raises_no_others(live: Live) -> None:
    prom = live.prom

    def active() -> set[str]:
        alerts = prom.api("alerts")["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] in {"pending", "firing"}}

    wait_until(lambda: active() >= PROVOKED, DATA_TIMEOUT, f"alerts {sorted(PROVOKED)}")
    alerts = prom.api("alerts")["data"]["alerts"]
    refusals = [a for a in alerts if a["labels"]["alertname"] == "MailjournalIngestKafkaRefusals"]
    # the ingest without Kafka, not the healthy one
    assert [a["labels"]["instance"] for a in refusals] == [live.broken_instance], refusals
    assert active() & MUST_BE_QUIET == set(), alerts
    gaps = [a for a in alerts if a["labels"]["alertname"] == "MailjournalAuditGaps"]
    assert {a["labels"]["kind"] for a in gaps} == {"unreadable"}, gaps  # no message unjournaled
    # every rule evaluates without error in the real Prometheus
    groups = prom.api("rules")["data"]["groups"]
    unhealthy = {
        r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"
    }
    assert unhealthy == {}
    assert live.errors == []
