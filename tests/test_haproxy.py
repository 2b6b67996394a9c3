"""Ingest behind a real TCP load balancer, as docs/operations.md configures it: Debian's HAProxy
(2.6) in TCP mode, ``send-proxy-v2``, SMTP health checks, in front of two ``mailjournal ingest``
processes whose listener believes PROXY headers only from the balancer (``proxy_protocol_peers``).

Everything is on loopback: clients connect from their own 127.0.0.x addresses, the balancer
connects to ingest from 127.0.0.2 (its ``source``), so what ingest sees as the client can only be
the PROXY header's address. Observed: relay control and the per-client connection limit follow
the real client; one ingest SIGKILLed under load loses nothing that was answered 250 and the
balancer routes around it; a PROXY header straight from anyone else is never read."""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ingest.proxy import encode_v2
from mailjournal.config import Config
from tests.fixtures.config import write_config_file
from tests.fixtures.ingest import IngestProcess, RawSMTP, message_events, with_overrides
from tests.fixtures.smtp import free_port, wait_until

pytestmark = pytest.mark.kafka

BALANCER = "127.0.0.2"  # the source address HAProxy connects to ingest from
TRUSTED = "127.0.0.10"  # a client in trusted_networks: may relay out
UNTRUSTED = "127.0.0.11"
PER_CLIENT = 2  # max_connections_per_client


def haproxy_config(port: int, servers: dict[str, int], stats: Path) -> str:
    """The docs/operations.md configuration, on loopback, with fast health checks."""
    lines = "\n".join(f"  server {name} 127.0.0.1:{p}" for name, p in servers.items())
    return f"""global
  nbthread 1
  stats socket {stats} level admin

defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch

frontend smtp
  bind 127.0.0.1:{port}
  default_backend ingest

backend ingest
  balance roundrobin
  source {BALANCER}
  option smtpchk EHLO balancer.test
  default-server send-proxy-v2 check inter 300ms fall 2 rise 1
{lines}
"""


class HAProxy:
    def __init__(self, workdir: Path, servers: dict[str, int]):
        self.port = free_port()
        self.stats = workdir / "haproxy.sock"
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.port, servers, self.stats))
        check = subprocess.run(
            ["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.log_path = workdir / "haproxy.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)], stdout=self._log, stderr=subprocess.STDOUT
        )

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """Server name -> UP / DOWN / ... as the health checks see it."""
        try:
            csv = self.command("show stat")
        except OSError:
            return {}
        rows = [line.split(",") for line in csv.splitlines() if line and not line.startswith("#")]
        return {r[1]: r[17] for r in rows if r[0] == "ingest" and r[1] not in ("BACKEND",)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Farm:
    config: Config  # the first ingest's (both share topics and policy)
    ingests: dict[str, IngestProcess]
    ports: dict[str, int]  # their SMTP listeners
    metrics: dict[str, int]
    haproxy: HAProxy
    workdir: Path


def proxy_refusals(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('mailjournal_ingest_proxy_peer_refused_total{listener="mx"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def farm(kafka_config: Config, tmp_path: Path) -> Iterator[Farm]:
    ingests: dict[str, IngestProcess] = {}
    metrics: dict[str, int] = {}
    ports: dict[str, int] = {}
    config = kafka_config
    try:
        for name in ("ingest1", "ingest2"):
            ports[name], metrics[name] = free_port(), free_port()
            config = with_overrides(
                kafka_config,
                {
                    "organization": {"trusted_networks": [f"{TRUSTED}/32"]},
                    "ingest": {
                        "hostname": f"{name}.corp.example",
                        "max_connections_per_client": PER_CLIENT,
                        "listeners": [
                            {
                                "name": "mx",
                                "host": "127.0.0.1",
                                "port": ports[name],
                                "proxy_protocol": True,
                                "proxy_protocol_peers": [f"{BALANCER}/32"],
                            }
                        ],
                    },
                    "metrics": {"host": "127.0.0.1", "ingest_port": metrics[name]},
                },
            )
            path = write_config_file(config, tmp_path / f"{name}.toml")
            ingests[name] = IngestProcess(path, [ports[name], metrics[name]])
        haproxy = HAProxy(tmp_path, ports)
        try:
            wait_until(
                lambda: set(haproxy.server_states().values()) == {"UP"},
                30,
                "both ingests UP in HAProxy",
                diagnose=lambda: f"{haproxy.server_states()}\n{haproxy.log_path.read_text()}",
            )
            yield Farm(config, ingests, ports, metrics, haproxy, tmp_path)
        finally:
            haproxy.stop()
    finally:
        for ing in ingests.values():
            ing.kill()


@contextlib.contextmanager
def client(farm: Farm, source: str) -> Iterator[smtplib.SMTP]:
    s = smtplib.SMTP(timeout=30, source_address=(source, 0))
    try:
        s.connect("127.0.0.1", farm.haproxy.port)
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.close()


def send(farm: Farm, source: str, rcpt: str = "u@corp.example", subject: str = "x") -> str:
    """One message through the balancer; the event id of its 250 (raises on anything else)."""
    with client(farm, source) as s:
        s.ehlo("client.test")
        s.mail("sender@ext.example")
        code, reply = s.rcpt(rcpt)
        if code != 250:
            raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
        code, reply = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        s.quit()
    return reply.decode().rsplit(" ", 1)[-1]


def test_the_real_client_reaches_relay_control_and_the_event(farm: Farm) -> None:
    with client(farm, TRUSTED) as s:
        s.ehlo("inside.corp.example")
        s.mail("u@corp.example")
        assert s.rcpt("x@other.example")[0] == 250  # a trusted client relays out
        code, reply = s.data(b"Subject: out\r\n\r\nx\r\n")
        assert code == 250, reply
        trusted_id = reply.decode().rsplit(" ", 1)[-1]
    with client(farm, UNTRUSTED) as s:
        s.ehlo("outside.example")
        s.mail("a@ext.example")
        assert s.rcpt("x@other.example")[0] == 554  # the balancer is not the client
    events = {e["event_id"]: e for e in message_events(farm.config, min_count=1)}
    client_ = events[trusted_id]["client"]
    assert (client_["ip"], client_["proxied_by"]) == (TRUSTED, BALANCER)


def test_the_per_client_limit_counts_the_real_client(farm: Farm) -> None:
    """Held connections from one client: over two ingests of PER_CLIENT each, one of the first
    2 * PER_CLIENT + 1 is refused 421; another client still gets a banner meanwhile."""
    held: list[smtplib.SMTP] = []
    try:
        refused = None
        for _ in range(2 * PER_CLIENT + 1):
            s = smtplib.SMTP(timeout=30, source_address=("127.0.0.20", 0))
            held.append(s)
            code, banner = s.connect("127.0.0.1", farm.haproxy.port)
            if code != 220:
                refused = (code, banner)
                break
        assert refused is not None and refused[0] == 421, refused
        assert b"4.7.0" in refused[1]
        with client(farm, "127.0.0.21") as s:
            assert s.noop()[0] == 250  # connected and greeted
    finally:
        for s in held:
            with contextlib.suppress(Exception):
                s.close()


def test_a_proxy_header_not_from_the_balancer_is_never_read(farm: Farm) -> None:
    """Straight to an ingest (as from a pod or node port) with a PROXY header claiming the
    trusted client: closed before the banner, and counted."""
    metrics = farm.metrics["ingest1"]
    before = proxy_refusals(metrics)
    with RawSMTP(farm.ports["ingest1"], preamble=encode_v2(TRUSTED, 5000, "127.0.0.1", 25)) as c:
        c.sock.settimeout(5)
        # EOF, or a reset (the kernel's answer to a close with the header unread)
        with contextlib.suppress(ConnectionResetError):
            assert c.sock.recv(65536) == b""  # not even a banner
    wait_until(lambda: proxy_refusals(metrics) == before + 1, 10, "the refusal counted")


@dataclass
class Load:
    farm: Farm
    sources: list[str]
    accepted: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, source: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                event = send(self.farm, source, subject=f"{source} #{n}")
            except (OSError, smtplib.SMTPException) as err:
                with self.lock:  # not accepted: the client retries (the next message)
                    self.failures.append(f"{source}: {err!r}")
                continue
            with self.lock:
                self.accepted.append(event)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def test_an_ingest_killed_under_load_loses_nothing_that_got_250(farm: Farm) -> None:
    load = Load(farm, [f"127.0.0.{30 + i}" for i in range(4)])
    threads = [threading.Thread(target=load.run, args=(src,), daemon=True) for src in load.sources]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: load.count() >= 40, 60, "40 messages accepted")
        farm.ingests["ingest1"].proc.kill()  # SIGKILL, mid-load
        wait_until(
            lambda: farm.haproxy.server_states().get("ingest1") == "DOWN",
            20,
            "HAProxy marks the killed ingest DOWN",
        )
        after_down = load.count()
        wait_until(lambda: load.count() >= after_down + 40, 60, "40 more messages accepted")
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    # the balancer routes around the dead ingest: each message now is accepted at once
    for i in range(10):
        load.accepted.append(send(farm, "127.0.0.40", subject=f"after #{i}"))
    events = {e["event_id"] for e in message_events(farm.config, min_count=len(load.accepted))}
    lost = set(load.accepted) - events
    assert not lost, f"{len(lost)} messages answered 250 are not in the topic"
    assert farm.haproxy.server_states()["ingest2"] == "UP"


def directives(cfg: str) -> set[str]:
    """What a configuration does, not where: directive names (with their option or timeout),
    the default-server keywords; addresses, ports, timeouts' values and the global section out."""
    out: set[str] = set()
    section = ""
    for raw in cfg.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw.startswith(" "):
            section = words[0]
            continue
        if section == "global" or words[0] in ("bind", "server"):
            continue
        if words[0] == "default-server":
            out |= {f"default-server {w}" for w in words[1:] if not w[0].isdigit()}
        elif words[0] in ("option", "timeout"):
            out.add(" ".join(words[:2]))
        else:
            out.add(words[0])
    return out


def test_the_documented_configuration_is_the_tested_one(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    (documented,) = re.findall(r"```haproxy\n(.*?)```", text, re.S)
    path = tmp_path / "documented.cfg"
    path.write_text(documented)
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = haproxy_config(25, {"a": 2525, "b": 2526}, tmp_path / "stats.sock")
    assert directives(documented) == directives(tested)
    assert {"default-server send-proxy-v2", "default-server check", "option smtpchk"} <= (
        directives(documented)
    )
