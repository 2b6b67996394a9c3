"""A real Apache Kafka 4.x (KRaft) on this machine, run from Maven Central jars.

For development, tests and the one-machine run. ``mailjournal kafka-local up|down|status|fetch``.

Layout of ``DIR`` (default ``./var/kafka-local``)::

    state.json              pids, ports, bootstrap, version, command lines
    log4j2.properties       shared by all brokers; each writes into its own logs/ dir
    broker-<id>/server.properties
    broker-<id>/data/       log.dirs (formatted once; kept across down/up)
    broker-<id>/logs/       server.log (INFO+), format.log
    broker-<id>/stdout.log, stderr.log (WARN+ and JVM errors)

Jars are cached in ``$MAILJOURNAL_CACHE_DIR/kafka/<version>/libs`` (default cache dir
``~/.cache/mailjournal``); the chosen version is remembered there so later runs do no Maven work.
Ports: brokers listen on ``base_port + i``, controllers on ``base_port + n + i`` (so one broker on
the default base port is the Kafka quickstart's 9092 / 9093). Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

# newest first: the first that resolves from Maven Central is used
KAFKA_VERSIONS = ("4.4.0", "4.3.1", "4.2.0", "4.1.1", "4.0.0")
LOG4J_VERSION = "2.24.3"
DEFAULT_DIR = Path("var/kafka-local")
DEFAULT_BASE_PORT = 9092
HOST = "127.0.0.1"
BROKER_HEAP = ("-Xmx512m", "-Xms256m")
STOP_GRACE_SECONDS = 30.0
TAIL_LINES = 40

log = logging.getLogger(__name__)


class KafkaLocalError(RuntimeError):
    """Kafka could not be fetched, started or stopped; the message carries the evidence."""


# --------------------------------------------------------------------------- jars from Maven


def cache_root() -> Path:
    base = os.environ.get("MAILJOURNAL_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "mailjournal"
    return root / "kafka"


_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mailjournal</groupId>
  <artifactId>kafka-local</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- kafka_2.13 brings slf4j-api 1.7 but no backend: without these the broker logs nothing.
         log4j-slf4j-impl is the SLF4J 1.x binding (log4j-slf4j2-impl would not bind to 1.7). -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (parallel test sessions, two ``up`` at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    # Java stack frames crowd out the lines that say what went wrong ("Caused by: ...")
    kept = [
        line
        for line in text.rstrip().splitlines()
        if not line.lstrip().startswith(("at ", "... ")) or not line[:1].isspace()
    ]
    return "\n".join(kept[-lines:])


def _libs_ready(libs: Path) -> bool:
    return (libs / ".complete").exists()


def _maven_fetch(version: str, vdir: Path) -> tuple[bool, str]:
    """Copy kafka_2.13:<version> and its runtime dependencies into vdir/libs. (ok, maven output)"""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError(
            "Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars"
        )
    vdir.mkdir(parents=True, exist_ok=True)
    pom = vdir / "pom.xml"
    pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    staging = vdir / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    output = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # colour codes despite -B
    (vdir / "mvn.log").write_text(output)
    if proc.returncode != 0 or not (staging / f"kafka_2.13-{version}.jar").exists():
        shutil.rmtree(staging, ignore_errors=True)
        return False, output
    (staging / ".complete").write_text(version + "\n")
    libs = vdir / "libs"
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)  # atomic: a half-copied libs dir is never used
    return True, output


def resolve_kafka(version: str | None = None, *, quiet: bool = False) -> tuple[str, Path]:
    """The Kafka version and its libs dir, fetching with Maven on first use.

    Without ``version`` the remembered choice is used, else the newest of ``KAFKA_VERSIONS`` that
    Maven Central serves (and it is remembered).
    """
    root = cache_root()
    chosen_file = root / "chosen-version"

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    with _flock(root / ".lock"):
        if version is None and chosen_file.exists():
            remembered = chosen_file.read_text().strip()
            if remembered and _libs_ready(root / remembered / "libs"):
                return remembered, root / remembered / "libs"
        candidates = [version] if version else list(KAFKA_VERSIONS)
        failures: list[str] = []
        for candidate in candidates:
            libs = root / candidate / "libs"
            if _libs_ready(libs):
                ok = True
            else:
                say(f"kafka-local: fetching org.apache.kafka:kafka_2.13:{candidate} with Maven ...")
                ok, output = _maven_fetch(candidate, root / candidate)
                if not ok:
                    failures.append(
                        f"--- kafka {candidate}: mvn output (tail) ---\n{_tail(output)}"
                    )
                    say(f"kafka-local: kafka_2.13:{candidate} did not resolve")
            if ok:
                if version is None:
                    chosen_file.write_text(candidate + "\n")
                return candidate, libs
        raise KafkaLocalError(
            "could not fetch Apache Kafka jars with Maven (tried "
            + ", ".join(candidates)
            + f"; cache {root})\n"
            + "\n".join(failures)
        )


# --------------------------------------------------------------------------- processes


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaLocalError("java is not on PATH (Java 17+ is needed to run Kafka)")
    return java


def _proc_state(pid: int) -> str | None:
    """The /proc state letter of pid, None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name in parentheses may contain spaces; the state follows the last ')'
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_alive(pid: int, proc: subprocess.Popen[bytes] | None = None) -> bool:
    if proc is not None and proc.pid == pid:
        return proc.poll() is None  # reaps it and keeps its exit code
    # a child of this process not tracked by a Popen here stays a zombie until waited for
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# where listening ports are drawn from: below the kernel's ephemeral range (see free_ports)
_LISTEN_PORTS_FROM = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (the source ports of outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Ports free now, distinct (held together while they are found), from below the kernel's
    ephemeral range.

    A server that a test stops and starts again on its port (slapd, a broker, an SMTP sink in
    an outage test) must find the port free. A port of the ephemeral range can be taken in the
    meantime as the source port of any outgoing connection on the machine, and the restarted
    server's bind then fails: slapd exited 1 that way in a full CI run. No connection is given
    a port outside the range, so a port from below it stays free once its server has let go of
    it."""
    span = _ephemeral_low() - _LISTEN_PORTS_FROM
    if span < 100 * count:  # a machine whose ephemeral range leaves little below it
        span = 0
    # from a random place, so that two callers rarely try the same ports in the same order
    start = random.randrange(span) if span else 0
    candidates = (_LISTEN_PORTS_FROM + (start + i) % span for i in range(span))
    socks: list[socket.socket] = []
    try:
        for port in candidates:
            if len(socks) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # no SO_REUSEADDR: a port with connections left over (TIME_WAIT) is not free
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < count:  # nothing free below the range: what the kernel hands out
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _new_cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, base64url without padding; never starts with '-'
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _quiet_logger() -> logging.Logger:
    # librdkafka logs "connection refused" while brokers start; keep those out of stderr
    lg = logging.getLogger("devtools.kafka_local.librdkafka")
    lg.propagate = False
    lg.addHandler(logging.NullHandler())
    return lg


_LOG4J2 = """\
# Written by mailjournal kafka-local. Each broker JVM sets -Dkafka.logs.dir to its own logs dir.
status = warn
name = mailjournal-kafka-local

appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/${sys:mailjournal.log.name:-server}.log
appender.file.filePattern = ${sys:kafka.logs.dir}/${sys:mailjournal.log.name:-server}.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3

# WARN and above also go to the JVM's stderr, which kafka-local redirects to broker-<id>/stderr.log
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
appender.err.filter.threshold.type = ThresholdFilter
appender.err.filter.threshold.level = WARN

rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
rootLogger.appenderRef.err.ref = STDERR

# per-request logging is noise at INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
"""


@dataclass
class BrokerState:
    node_id: int
    port: int
    controller_port: int
    pid: int | None = None
    cmd: list[str] | None = None
    started_at: float | None = None


@dataclass(frozen=True)
class BrokerStatus:
    node_id: int
    pid: int | None
    alive: bool
    listening: bool
    port: int


class KafkaLocal:
    """A local KRaft cluster of 1 or 3 combined broker+controller nodes living in ``dir``.

    Brokers run detached (own session) so they outlive the Python process that started them;
    ``down()`` stops exactly the pids recorded in ``dir/state.json``. An existing ``dir`` keeps
    its layout (broker count, ports, version, data) across ``down``/``up``.
    """

    def __init__(
        self,
        dir: Path,
        brokers: int = 1,
        base_port: int | None = None,
        version: str | None = None,
        *,
        die_with_parent: bool = False,
    ) -> None:
        if brokers not in (1, 3):
            raise ValueError("brokers must be 1 or 3")
        self.dir = Path(dir).resolve()
        self.n = brokers
        self.requested_base_port = base_port
        self.requested_version = version
        # SIGTERM the brokers when the starting thread dies (test sessions killed hard);
        # the CLI never sets it: `up` must return while brokers keep running
        self.die_with_parent = die_with_parent
        self.version: str | None = None
        self.libs: Path | None = None
        self.cluster_id: str | None = None
        self.brokers: dict[int, BrokerState] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._load_state()

    # ----------------------------------------------------------------- state

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def _load_state(self) -> None:
        if not self.state_file.exists():
            return
        data = json.loads(self.state_file.read_text())
        if len(data["brokers"]) != self.n:
            raise KafkaLocalError(
                f"{self.dir} holds a {len(data['brokers'])}-broker cluster, not {self.n}; "
                f"use another --dir or remove it"
            )
        if self.requested_version and data["version"] != self.requested_version:
            raise KafkaLocalError(
                f"{self.dir} was formatted by Kafka {data['version']}, not "
                f"{self.requested_version}; use another --dir or remove it"
            )
        self.version = data["version"]
        self.cluster_id = data["cluster_id"]
        self.libs = Path(data["libs"])
        self.brokers = {b["node_id"]: BrokerState(**b) for b in data["brokers"]}
        base = min(b.port for b in self.brokers.values())
        if self.requested_base_port not in (None, base):
            raise KafkaLocalError(
                f"{self.dir} uses broker ports from {base}, not {self.requested_base_port}; "
                f"use another --dir or remove it"
            )

    def _save_state(self) -> None:
        data: dict[str, Any] = {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "libs": str(self.libs),
            "dir": str(self.dir),
            "bootstrap": self.bootstrap,
            "brokers": [vars(b) for b in self.brokers.values()],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_file)

    @property
    def bootstrap(self) -> str:
        if not self.brokers:
            raise KafkaLocalError(f"no cluster in {self.dir} yet (call up())")
        return ",".join(f"{HOST}:{b.port}" for b in self.brokers.values())

    def broker_dir(self, node_id: int) -> Path:
        return self.dir / f"broker-{node_id}"

    # ----------------------------------------------------------------- layout

    def _plan(self) -> None:
        """Choose ports and a cluster id for a new cluster."""
        if self.requested_base_port is None:
            ports = free_ports(2 * self.n)
        else:
            b = self.requested_base_port
            ports = list(range(b, b + 2 * self.n))
        self.brokers = {
            i + 1: BrokerState(node_id=i + 1, port=ports[i], controller_port=ports[self.n + i])
            for i in range(self.n)
        }
        self.cluster_id = _new_cluster_id()

    def _server_properties(self, node_id: int) -> str:
        b = self.brokers[node_id]
        assert self.libs is not None
        rf, isr = (1, 1) if self.n == 1 else (3, 2)
        props: dict[str, object] = {
            "process.roles": "broker,controller",
            "node.id": node_id,
            "listeners": f"PLAINTEXT://{HOST}:{b.port},CONTROLLER://{HOST}:{b.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{b.port},"
            f"CONTROLLER://{HOST}:{b.controller_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": self.broker_dir(node_id) / "data",
            "num.partitions": 1,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            # fewer internal partitions than the production 50: faster first group / txn use
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.num.partitions": 10,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            # the cleaner's default 128 MiB dedupe buffer is a quarter of our small heap
            "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
            "num.network.threads": 2,
            "num.io.threads": 4,
        }
        if self.n == 1:
            props["controller.quorum.bootstrap.servers"] = f"{HOST}:{b.controller_port}"
        else:
            props["controller.quorum.voters"] = ",".join(
                f"{o.node_id}@{HOST}:{o.controller_port}" for o in self.brokers.values()
            )
        if any(self.libs.glob("kafka-share-coordinator-*.jar")):
            props["share.coordinator.state.topic.replication.factor"] = rf
            props["share.coordinator.state.topic.min.isr"] = isr
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _jvm(self, node_id: int, log_name: str) -> list[str]:
        assert self.libs is not None
        return [
            _java(),
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.broker_dir(node_id) / 'logs'}",
            f"-Dmailjournal.log.name={log_name}",
            "-cp",
            f"{self.libs}/*",  # expanded by java itself
        ]

    def _format(self) -> None:
        """Write configs and format every broker's storage that is not formatted yet."""
        (self.dir / "log4j2.properties").write_text(_LOG4J2)
        running: list[tuple[int, subprocess.Popen[str]]] = []
        for node_id in self.brokers:
            bdir = self.broker_dir(node_id)
            (bdir / "logs").mkdir(parents=True, exist_ok=True)
            (bdir / "server.properties").write_text(self._server_properties(node_id))
            if (bdir / "data" / "meta.properties").exists():
                continue
            assert self.cluster_id is not None
            cmd = [
                *self._jvm(node_id, "format"),
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",  # short-lived tool: start fast
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(bdir / "server.properties"),
            ]
            if self.n == 1:
                cmd.append("--standalone")
            # run as a subprocess: the tool exits its JVM; all nodes format in parallel
            running.append(
                (
                    node_id,
                    subprocess.Popen(
                        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                    ),
                )
            )
        for node_id, proc in running:
            out, _ = proc.communicate(timeout=180)
            if proc.returncode != 0:
                raise KafkaLocalError(
                    f"formatting broker {node_id} failed (exit {proc.returncode}):\n{_tail(out)}"
                )

    # ----------------------------------------------------------------- lifecycle

    def _is_ours(self, pid: int | None) -> bool:
        """pid is alive and still one of this dir's brokers (pids get reused)."""
        if pid is None:
            return False
        proc = next((p for p in self._procs.values() if p.pid == pid), None)
        if proc is not None:
            # our own child: its pid cannot be reused before we reap it, and its cmdline reads
            # empty for a moment while execve is still setting up the new program
            return proc.poll() is None
        if not _pid_alive(pid):
            return False
        cmd = _cmdline(pid)
        return "kafka.Kafka" in cmd and any(str(self.dir) + "/" in a for a in cmd)

    def broker_pids(self) -> dict[int, int | None]:
        """node id -> pid of the running broker, None when it is not running."""
        return {n: (b.pid if self._is_ours(b.pid) else None) for n, b in self.brokers.items()}

    def status(self) -> list[BrokerStatus]:
        out = []
        for n, b in self.brokers.items():
            alive = self._is_ours(b.pid)
            out.append(BrokerStatus(n, b.pid, alive, alive and _port_open(b.port), b.port))
        return out

    def up(self, timeout: float = 180.0) -> str:
        """Start (or just report) the cluster; returns the bootstrap servers once it serves."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with _flock(self.dir / ".lock"):
            self._load_state()
            if not self.brokers:
                self.version, self.libs = resolve_kafka(self.requested_version)
                self._plan()
            elif self.libs is None or not _libs_ready(self.libs):
                assert self.version is not None
                self.version, self.libs = resolve_kafka(self.version)
            self._format()
            started = []
            for node_id, b in self.brokers.items():
                if not self._is_ours(b.pid):
                    self._spawn(node_id)
                    started.append(b.pid)
            self._save_state()
            try:
                self.wait_ready(timeout)
            except BaseException:
                # a failed `up` leaves nothing running that it started
                self._stop([p for p in started if p is not None], grace=10)
                raise
            return self.bootstrap

    def _spawn(self, node_id: int) -> None:
        bdir = self.broker_dir(node_id)
        cmd = [
            *self._jvm(node_id, "server"),
            *BROKER_HEAP,
            "kafka.Kafka",
            str(bdir / "server.properties"),
        ]
        if self.die_with_parent and (setpriv := shutil.which("setpriv")):
            cmd = [setpriv, "--pdeathsig", "SIGTERM", "--", *cmd]  # execs java: same pid
        with (bdir / "stdout.log").open("ab") as out, (bdir / "stderr.log").open("ab") as err:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=bdir,
                start_new_session=True,  # not in our process group: Ctrl-C on `up` spares it
            )
        self._procs[node_id] = proc
        b = self.brokers[node_id]
        b.pid, b.cmd, b.started_at = proc.pid, cmd, time.time()

    def start_broker(self, node_id: int, timeout: float = 120.0) -> None:
        """(Re)start one broker on its existing data and wait until it serves again."""
        if node_id not in self.brokers:
            raise KeyError(f"no broker {node_id} in {self.dir}")
        if not self._is_ours(self.brokers[node_id].pid):
            self._spawn(node_id)
            self._save_state()
        self.wait_ready(timeout, only=[node_id])

    def kill_broker(
        self, node_id: int, sig: int = signal.SIGKILL, wait: float = STOP_GRACE_SECONDS
    ) -> None:
        """Send sig to one broker; for SIGKILL/SIGTERM/SIGINT wait until it has exited."""
        pid = self.brokers[node_id].pid
        if not self._is_ours(pid):
            return
        assert pid is not None
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self._wait_exit([pid], wait)

    def _wait_exit(self, pids: list[int], timeout: float) -> list[int]:
        """Wait for pids to exit; returns those still running."""
        deadline = time.monotonic() + timeout
        procs = {p.pid: p for p in self._procs.values()}
        left = [p for p in pids if _pid_alive(p, procs.get(p))]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [p for p in left if _pid_alive(p, procs.get(p))]
        return left

    def down(self, grace: float = STOP_GRACE_SECONDS) -> list[int]:
        """Stop this dir's brokers (SIGTERM, SIGKILL after grace). Returns the pids stopped."""
        if not self.dir.exists():
            return []
        with _flock(self.dir / ".lock"):
            self._load_state()
            pids = [b.pid for b in self.brokers.values() if b.pid and self._is_ours(b.pid)]
            self._stop(pids, grace)
            return pids

    def _stop(self, pids: list[int], grace: float) -> None:
        # all at once: a 3-node quorum shuts down together instead of losing its majority
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        left = self._wait_exit(pids, grace)
        for pid in left:
            log.warning("broker pid %d ignored SIGTERM for %.0fs; sending SIGKILL", pid, grace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if still := self._wait_exit(left, 10):
            raise KafkaLocalError(f"brokers did not exit: pids {still}")

    # ----------------------------------------------------------------- readiness

    def diagnostics(self, node_id: int) -> str:
        """Tails of a broker's stderr and server log, for error messages."""
        bdir = self.broker_dir(node_id)
        parts = []
        # stderr.log has WARN+ and JVM errors: the cause; server.log's tail: what it did last
        for name, lines in (("stderr.log", TAIL_LINES), ("logs/server.log", 15)):
            path = bdir / name
            if path.exists():
                text = _tail(path.read_text(errors="replace"), lines)
                parts.append(f"--- {path} (tail) ---\n{text or '(empty)'}")
        return "\n".join(parts) or f"(no logs in {bdir})"

    def _check_alive(self, only: list[int]) -> None:
        for node_id in only:
            b = self.brokers[node_id]
            if not self._is_ours(b.pid):
                proc = self._procs.get(node_id)
                code = proc.poll() if proc else None
                raise KafkaLocalError(
                    f"kafka broker {node_id} (pid {b.pid}) exited"
                    + (f" with code {code}" if code is not None else "")
                    + f" during startup\n{self.diagnostics(node_id)}"
                )

    def wait_ready(self, timeout: float = 180.0, only: list[int] | None = None) -> None:
        """Until each broker (or those in ``only``) answers metadata listing itself and the whole
        cluster accepts a probe topic; any broker exiting meanwhile raises with its log tails."""
        nodes = only or list(self.brokers)
        deadline = time.monotonic() + timeout
        pending = set(nodes)
        quiet = _quiet_logger()
        last_error = "no answer yet"
        while pending:
            self._check_alive(nodes)
            if time.monotonic() > deadline:
                raise KafkaLocalError(
                    f"kafka brokers {sorted(pending)} not ready after {timeout:.0f}s "
                    f"(last error: {last_error})\n"
                    + "\n".join(self.diagnostics(n) for n in sorted(pending))
                )
            for node_id in sorted(pending):
                port = self.brokers[node_id].port
                if not _port_open(port):
                    continue
                # ask this very broker: it answers only once it has caught up and is unfenced
                conf: dict[str, Any] = {
                    "bootstrap.servers": f"{HOST}:{port}",
                    "logger": quiet,
                    "socket.timeout.ms": 5000,
                }
                admin = AdminClient(conf)
                try:
                    cluster = admin.describe_cluster(request_timeout=5).result(timeout=10)
                    ids = {n.id for n in cluster.nodes}
                    if node_id in ids and (only is not None or len(ids) >= self.n):
                        pending.discard(node_id)
                    else:
                        last_error = f"broker {node_id} sees nodes {sorted(ids)}"
                except (KafkaException, TimeoutError) as exc:
                    last_error = str(exc)
            if pending:
                time.sleep(0.3)
        if only is not None:
            return
        # the cluster is usable when a topic with full replication can be created
        conf = {"bootstrap.servers": self.bootstrap, "logger": quiet}
        admin = AdminClient(conf)
        probe = f"__mailjournal_probe_{uuid.uuid4().hex[:12]}"
        while True:
            self._check_alive(nodes)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaLocalError(
                    f"kafka cluster in {self.dir} could not create a probe topic in {timeout:.0f}s "
                    f"(last error: {last_error})\n"
                    + "\n".join(self.diagnostics(n) for n in self.brokers)
                )
            try:
                futures = admin.create_topics(
                    [NewTopic(probe, 1, self.n)], operation_timeout=min(remaining, 30)
                )
                futures[probe].result(timeout=min(remaining, 30) + 5)
                break
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    break
                last_error = str(exc)
                time.sleep(0.5)
        with contextlib.suppress(KafkaException):
            admin.delete_topics([probe], operation_timeout=30)[probe].result(timeout=35)


# --------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "fetch"])
    parser.add_argument(
        "--brokers", type=int, choices=[1, 3], default=None, help="1 (default) or 3"
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"cluster dir (default {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"first broker port; brokers use PORT.., controllers the ports after them "
        f"(default {DEFAULT_BASE_PORT}; 0 = any free ports)",
    )
    parser.add_argument(
        "--version",
        default=None,
        help=f"Kafka version (default: newest of {', '.join(KAFKA_VERSIONS)} that resolves)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the brokers (up)"
    )


def main(args: argparse.Namespace) -> int:
    try:
        if args.action == "fetch":
            version, libs = resolve_kafka(args.version)
            print(f"kafka {version}: {libs}")
            return 0
        state_file = args.dir / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        # an existing dir keeps its layout: only explicit options are checked against it
        brokers = args.brokers or (len(state["brokers"]) if state else 1)
        if args.port == 0:
            port = None
        elif args.port is None and state is None:
            port = DEFAULT_BASE_PORT
        else:
            port = args.port
        if args.action == "up":
            kl = KafkaLocal(args.dir, brokers, port, args.version)
            bootstrap = kl.up(timeout=args.timeout)
            print(
                f"kafka-local: {kl.n} broker(s), Kafka {kl.version}, dir {kl.dir}", file=sys.stderr
            )
            print(bootstrap)
            return 0
        if state is None:
            print(f"kafka-local: no cluster in {args.dir}", file=sys.stderr)
            return 1
        kl = KafkaLocal(args.dir, brokers)
        if args.action == "down":
            stopped = kl.down()
            print(f"kafka-local: stopped {len(stopped)} broker(s) in {kl.dir}")
            return 0
        statuses = kl.status()
        for s in statuses:
            alive = "alive" if s.alive else "dead"
            listening = " listening" if s.listening else (" not listening" if s.alive else "")
            print(f"broker {s.node_id}: {alive}{listening} pid={s.pid} port={s.port}")
        print(f"bootstrap: {kl.bootstrap}")
        return 0 if all(s.alive for s in statuses) else 1
    except KafkaLocalError as exc:
        print(f"kafka-local: {exc}", file=sys.stderr)
        return 1
