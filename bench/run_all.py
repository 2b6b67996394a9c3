"""``make bench``: mailjournal side by side with Postfix and smtp-sink, same machine, same run.

    .venv/bin/python -m bench.run_all [--quick] [--seconds 20] [--sizes 1024,10240,...]
        [--targets sink,postfix,mailjournal] [--baseline HEAD] [--out results]

Starts a local real Kafka (one broker), Postfix's ``smtp-sink`` (the smart host of every target),
a private Postfix journaling with ``recipient_bcc_maps`` (``bench/postfix_peer.py``) and the three
mailjournal stages with production settings (acks=all, idempotence, transactions). For each target
and body size it drives ``smtp-source`` (20 sessions) for at least ``--seconds`` and reports
accepted msgs/s, end-to-end msgs/s (until every journal copy reached the sink), end-to-end latency
p50/p95/p99, CPU seconds per message and peak RSS per stage, and the ratios to Postfix and
smtp-sink. Writes ``results/bench-<time>.json``, ``.md`` and ``.png`` and prints the table.

Latency: mailjournal's is read from the ``DeliveryOutcome`` events on the outcomes topic (``at``,
stamped when the smart host answered 250, minus the receive time carried by the time-ordered
event id); Postfix's from its own log (``delay=`` of the journal recipient's ``status=sent``).

``--baseline REF`` adds a target ``mailjournal@REF`` that runs the stages from ``git archive REF``
with their default settings: the before/after of optimisations measured in the same invocation.

Hygiene: before the first target, a throwaway mailjournal target of each topology in the run
(journal only; journal + relay) carries unmeasured 1 KB points until the broker's JIT has
settled (:func:`run_in`; a run without mailjournal targets warms the broker through the floor's
roles instead, :func:`warm_broker`), and every target gets ``--warmup`` seconds of
1 KB load after it starts and before its first point (without them the first mailjournal target
paid the broker's warm-up: 790 vs 880 msgs/s in an A/A run, and up to 0.15 ms more Kafka CPU per
message); ``--order random`` shuffles the targets (seed printed, ``--seed`` repeats it). Beside
the CPU per stage, each mailjournal point reports the Kafka requests per message by API, read
from the broker's own request metrics (``bench/kafka_requests.py``; needs a JDK).
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import datetime as dt
import functools
import io
import json
import os
import signal
import smtplib
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_SIZES,
    POSTFIX,
    ROOT,
    SMTP_SINK,
    SMTP_SOURCE,
    ProcSampler,
    box_busy_seconds,
    fmt,
    human,
    latency_summary,
    markdown_table,
    metric_value,
    metrics_text,
    missing_tools,
    over_box,
    run_source,
    sample_sum,
    smtp_sink,
    wait_for,
    wait_port,
)
from bench.kafka_requests import BrokerRequests, per_message
from bench.kafka_requests import summary as requests_summary
from bench.postfix_peer import JOURNAL_ADDRESS, PostfixPeer

# first guesses of the accepted rate (msgs/s) per target family; a calibration burst refines them
RATE_GUESS = {"sink": 2000.0, "postfix": 300.0, "mailjournal": 800.0}


def size_guess(rate: float, size: int) -> float:
    return rate if size <= 10240 else min(rate, 150_000_000 / size)


# -- targets ---------------------------------------------------------------------------------------


class Target(abc.ABC):
    """One thing smtp-source sends to. ``mark()`` before a point, then ``delivered(mark)`` counts
    journal copies that reached the sink since, ``latencies(mark)`` gives their seconds."""

    name = "?"
    family = "?"
    copies_per_message = 1

    def __init__(self, sink_port: int, sink_pid: int):
        self.sink_port = sink_port
        self.sink_pid = sink_pid
        self.port = 0

    def start(self, work: Path) -> None:  # a target with nothing to start
        return None

    def stop(self) -> None:  # a target with nothing to stop
        return None

    def groups(self) -> dict[str, int]:
        return {}

    def mark(self) -> Any:
        return None

    @abc.abstractmethod
    def delivered(self, mark: Any) -> int:
        """Journal copies (and relayed originals) that reached the sink since ``mark``."""

    def latencies(self, mark: Any) -> list[float]:
        return []

    def accepted(self, mark: Any, sent: int) -> int:
        return sent


class SinkTarget(Target):
    name = family = "sink"

    def start(self, work: Path) -> None:
        self.port = self.sink_port

    def groups(self) -> dict[str, int]:
        return {"smtp-sink": self.sink_pid}

    def delivered(self, mark: Any) -> int:
        return sys.maxsize  # the sink is the end: accepted is delivered


class PostfixTarget(Target):
    name = family = "postfix"

    def start(self, work: Path) -> None:
        from devtools.kafka_local import free_ports

        (self.port,) = free_ports(1)
        self.peer = PostfixPeer(work / "postfix", self.port, self.sink_port)
        self.peer.start()

    def stop(self) -> None:
        if hasattr(self, "peer"):
            self.peer.stop()

    def groups(self) -> dict[str, int]:
        pid = self.peer.master_pid()
        assert pid, "postfix master pid unknown"
        return {"postfix": pid, "smtp-sink": self.sink_pid}

    def mark(self) -> int:
        return self.peer.log_offset()

    def _journal_delays(self, mark: int) -> list[float]:
        return [d for rcpt, d in self.peer.sent(mark) if rcpt == JOURNAL_ADDRESS]

    def delivered(self, mark: int) -> int:
        return len(self._journal_delays(mark))

    def latencies(self, mark: int) -> list[float]:
        return self._journal_delays(mark)


def relay_overrides(sink_port: int) -> dict[str, Any]:
    """The config that makes mailjournal relay the original too (inline mode, docs/relay.md):
    the listener is ``relay = true`` and both next hops are the sink, as Postfix relays the
    original and the copy to it. The relay stage (``mailjournal relay``) then runs beside the
    others, so this target does the same work as Postfix with ``recipient_bcc_maps``."""
    hop = {"host": "127.0.0.1", "port": sink_port}
    return {"relay": {"inbound": hop, "outbound": hop}}


class MailjournalTarget(Target):
    family = "mailjournal"

    def __init__(
        self,
        sink_port: int,
        sink_pid: int,
        *,
        name: str,
        bootstrap: str,
        kafka_pid: int | None,
        tree: Path = ROOT,
        ingest_workers: int = 2,
        overrides: dict[str, Any] | None = None,
        relay: bool = False,
        delivery_procs: int = 1,
    ):
        super().__init__(sink_port, sink_pid)
        self.name = name
        self.bootstrap = bootstrap
        self.kafka_pid = kafka_pid
        self.tree = tree
        self.ingest_workers = ingest_workers
        self.delivery_procs = delivery_procs
        self.overrides = overrides or {}
        self.relay = relay
        if relay:
            self.overrides = {**self.overrides, **relay_overrides(sink_port)}
            self.copies_per_message = 2
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, work: Path) -> None:
        from devtools.kafka_local import free_ports
        from mailjournal.config import load_config_dict
        from tests.fixtures.config import deep_merge, write_config_file
        from tests.fixtures.kafka import kafka_test_config, unique_suffix

        self.port, m_in, m_jr, m_dl, m_rl = free_ports(5)
        # one metrics port per extra delivery process (same consumer group: partitions shared)
        m_dl_extra = free_ports(self.delivery_procs - 1) if self.delivery_procs > 1 else []
        safe = "".join(c if c.isalnum() else "-" for c in self.name)
        base = kafka_test_config(self.bootstrap, unique_suffix(f"bench-{safe}"), partitions=6)
        data = deep_merge(
            base.model_dump(mode="json"),
            {
                "ingest": {
                    "hostname": "mx.corp.example",
                    "listeners": [
                        {"name": "mx", "host": "127.0.0.1", "port": self.port}
                        | ({"relay": True} if self.relay else {})
                    ],
                    "max_connections": 2000,
                    "max_connections_per_client": 2000,
                },
                "delivery": {"smart_host": {"host": "127.0.0.1", "port": self.sink_port}},
                "metrics": {"ingest_port": m_in, "journal_port": m_jr, "delivery_port": m_dl}
                | ({"relay_port": m_rl} if self.relay else {}),
                "logging": {"level": "WARNING"},
            },
        )
        self.config = load_config_dict(deep_merge(data, self.overrides))
        self.metrics = {"ingest": m_in, "journal": m_jr, "delivery": m_dl}
        if self.relay:
            self.metrics["relay"] = m_rl
        cfg_files: dict[str, Path | None] = {"delivery": None}
        self.dir = work / safe
        self.dir.mkdir(parents=True, exist_ok=True)
        # a baseline tree gets only what differs from the defaults: its own defaults for the rest,
        # and no setting its older config schema would refuse as unknown
        write_toml = functools.partial(write_config_file, sparse=self.tree != ROOT)
        cfg_file = write_toml(self.config, self.dir / "mailjournal.toml")
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        py = [sys.executable, "-m", "mailjournal"]
        subprocess.run(
            [*py, "topics", "ensure", "--config", str(cfg_file)],
            cwd=self.tree,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.log = open(self.dir / "stages.log", "ab")  # noqa: SIM115 - closed in stop()
        stages: dict[str, list[str]] = {"delivery": ["deliver"]}
        for i, port in enumerate(m_dl_extra, start=2):
            # the same config but its own metrics port: a second member of the delivery group
            extra = load_config_dict(
                deep_merge(data, deep_merge(self.overrides, {"metrics": {"delivery_port": port}}))
            )
            cfg_files[f"delivery{i}"] = write_toml(extra, self.dir / f"mailjournal-d{i}.toml")
            self.metrics[f"delivery{i}"] = port
            stages[f"delivery{i}"] = ["deliver"]
        if self.relay:
            stages["relay"] = ["relay"]
        stages["journal"] = ["journal"]
        stages["ingest"] = ["ingest", "--workers", str(self.ingest_workers)]
        for stage, argv in stages.items():
            cfg = cfg_files.get(stage) or cfg_file
            cmd = [*py, argv[0], "--config", str(cfg), *argv[1:]]
            self.procs[stage] = subprocess.Popen(
                cmd, cwd=self.tree, env=env, stdout=self.log, stderr=self.log
            )
        for stage in stages:
            if not wait_for(lambda s=stage: self._ready(s), 90, 0.2):  # type: ignore[misc]
                raise RuntimeError(f"{self.name}: {stage} not ready; see {self.dir}/stages.log")
        wait_port(self.port, 30)

    def _ready(self, stage: str) -> bool:
        proc = self.procs[stage]
        if proc.poll() is not None:
            raise RuntimeError(f"{self.name}: {stage} exited with {proc.returncode}")
        try:
            import urllib.request

            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics[stage]}/readyz", timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        # the front door first
        order = ["ingest", "journal", *(s for s in self.procs if s not in ("ingest", "journal"))]
        for stage in order:
            proc = self.procs.get(stage)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        with contextlib.suppress(AttributeError):
            self.log.close()

    def groups(self) -> dict[str, int]:
        g = {stage: p.pid for stage, p in self.procs.items()}
        if self.kafka_pid:
            g["kafka"] = self.kafka_pid
        g["smtp-sink"] = self.sink_pid
        return g

    def _delivered_metric(self) -> float:
        """Journal copies (and with the relay, relayed originals) delivered, over every
        delivery process."""
        total = sum(
            metric_value(
                port,
                "mailjournal_delivery_outcomes_total",
                {"kind": "journal", "status": "delivered"},
            )
            for stage, port in self.metrics.items()
            if stage.startswith("delivery")
        )
        if self.relay:
            total += metric_value(
                self.metrics["relay"],
                "mailjournal_delivery_outcomes_total",
                {"kind": "relay", "status": "delivered"},
            )
        return total

    def _accepted_metric(self) -> float:
        return metric_value(self.metrics["ingest"], "mailjournal_ingest_messages_accepted_total")

    def mark(self) -> dict[str, Any]:
        return {
            "delivered": self._delivered_metric(),
            "accepted": self._accepted_metric(),
            "offsets": self._high_watermarks(),
        }

    def accepted(self, mark: dict[str, Any], sent: int) -> int:
        return int(self._accepted_metric() - mark["accepted"])

    def delivered(self, mark: dict[str, Any]) -> int:
        return int(self._delivered_metric() - mark["delivered"])

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-reader-{os.getpid()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )

    def _high_watermarks(self) -> dict[int, int]:
        c = self._consumer()
        try:
            topic = self.config.kafka.topics.outcomes.name
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            from confluent_kafka import TopicPartition

            return {
                p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
            }
        finally:
            c.close()

    def latencies(self, mark: dict[str, Any]) -> list[float]:
        from confluent_kafka import TopicPartition

        from schemas.codec import decode

        topic = self.config.kafka.topics.outcomes.name
        start, end = mark["offsets"], self._high_watermarks()
        c = self._consumer()
        out: list[float] = []
        try:
            todo = {p for p in end if end[p] > start.get(p, 0)}
            c.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
            deadline = time.monotonic() + 120
            while todo and time.monotonic() < deadline:
                msg = c.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == -191:  # _PARTITION_EOF
                        todo.discard(msg.partition())
                    continue
                if msg.offset() >= end[msg.partition()] - 1:
                    todo.discard(msg.partition())
                rec = decode(msg.value(), "DeliveryOutcome")
                # the journal copy's latency (relayed originals share the topic: kind RELAY)
                if rec["status"] != "DELIVERED" or rec["kind"] != "JOURNAL":
                    continue
                at = rec["at"]
                at_ms = at.timestamp() * 1000 if isinstance(at, dt.datetime) else float(at)
                out.append(max(0.0, at_ms - ulid_millis(rec["event_id"])) / 1000)
        finally:
            c.close()
        return out


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def ulid_millis(ulid: str) -> int:
    """The millisecond timestamp in a ULID's first 10 characters: ingest takes the event id right
    after ``received_at`` (same clock, same millisecond in practice)."""
    value = 0
    for ch in ulid[:10].upper():
        value = value * 32 + _CROCKFORD[ch]
    return value


def loop_lag(port: int) -> dict[str, float]:
    """Ingest's event-loop lag histograms (ingest/loopmon.py): 50 ms intervals in all, and those
    whose lag, and whose busy part of the lag (the loop's own CPU work), stayed within 100 ms."""
    lag, busy = (
        "mailjournal_ingest_event_loop_lag_seconds",
        "mailjournal_ingest_event_loop_busy_lag_seconds",
    )
    text = metrics_text(port)  # one scrape: the three counts must describe the same intervals
    return {
        "intervals": sample_sum(text, f"{lag}_count"),
        "lag_le_100ms": sample_sum(text, f"{lag}_bucket", {"le": "0.1"}),
        "busy_le_100ms": sample_sum(text, f"{busy}_bucket", {"le": "0.1"}),
    }


# -- an SMTP NOOP probe: the longest stall a client sees on an ingest event loop --------------------


class StallProbe:
    """Four idle SMTP sessions that send NOOP every 20 ms; reports the slowest reply. With
    SO_REUSEPORT the sessions spread over the ingest workers; a reply slower than 100 ms means that
    worker's event loop (or the CPU it runs on) stalled that long."""

    def __init__(self, port: int, sessions: int = 4):
        self.port = port
        self.sessions = sessions
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
            s.ehlo("probe.bench.example")
            while not self._stop.wait(0.02):
                t = time.perf_counter()
                s.noop()
                self.rtts.append(time.perf_counter() - t)
            with contextlib.suppress(Exception):
                s.quit()

    def __enter__(self) -> StallProbe:
        for _ in range(self.sessions):
            th = threading.Thread(target=self._run, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(35)

    def summary(self) -> dict[str, float | None]:
        r = self.rtts
        s = latency_summary(r)
        return {"noop_n": len(r), "noop_p99_ms": _ms(s["p99_s"]), "noop_max_ms": _ms(s["max_s"])}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


# -- one point ---------------------------------------------------------------------------------------


def warm_up(target: Target, seconds: float, sessions: int, drain_timeout: float) -> float:
    """Load a freshly started target before anything is measured: the broker's JIT, its log
    segments and page cache, the stages' connections and partition leaders (an A/A run showed
    the first target 10% slower without it). Returns the seconds spent."""
    if seconds <= 0:
        return 0.0
    t0 = time.perf_counter()
    mark = target.mark()
    sent = 0
    # in bursts until the time is up: a loaded machine must not turn it into minutes
    burst = 200
    while time.perf_counter() - t0 < seconds:
        run_source(target.port, 1024, burst, sessions, timeout=600)
        sent += burst
    want = target.accepted(mark, sent) * target.copies_per_message
    wait_for(lambda: target.delivered(mark) >= want, drain_timeout, 0.2)
    return time.perf_counter() - t0


def target_order(names: list[str], order: str, seed: int) -> list[int]:
    """Indexes of the targets in the order they run: as given, or shuffled by ``seed`` (pure)."""
    idx = list(range(len(names)))
    if order == "random":
        import random

        random.Random(seed).shuffle(idx)
    return idx


def run_point(
    target: Target,
    size: int,
    seconds: float,
    sessions: int,
    drain_timeout: float,
    broker: BrokerRequests | None = None,
) -> dict[str, Any]:
    guess = size_guess(RATE_GUESS[target.family], size)
    # calibration + warm-up: about a tenth of the point; then wait for the pipeline to drain
    cal_count = max(40, int(guess * max(1.0, seconds / 10)))
    mark = target.mark()
    cal_s = run_source(target.port, size, cal_count, sessions, timeout=600)
    cal_accepted = target.accepted(mark, cal_count)
    want = cal_accepted * target.copies_per_message
    wait_for(lambda: target.delivered(mark) >= want, drain_timeout, 0.2)
    rate = max(cal_accepted, 1) / cal_s
    count = max(50, int(rate * seconds))

    sampler = ProcSampler()
    for group, pid in target.groups().items():
        sampler.add(group, pid)
    mark = target.mark()
    probe = StallProbe(target.port) if target.family == "mailjournal" else None
    ingest_port = (getattr(target, "metrics", None) or {}).get("ingest")
    loop_before = loop_lag(ingest_port) if ingest_port else None
    requests_before = broker.snapshot() if broker is not None else None
    with sampler, probe or contextlib.nullcontext():
        box0 = box_busy_seconds()
        t0 = time.perf_counter()
        accept_s = run_source(target.port, size, count, sessions, sampler=sampler, timeout=1800)
        accepted = target.accepted(mark, count)
        want = accepted * target.copies_per_message
        done = wait_for(lambda: target.delivered(mark) >= want, drain_timeout, 0.05)
        e2e_s = time.perf_counter() - t0
        box_s = box_busy_seconds() - box0
    requests_after = broker.snapshot() if broker is not None else None
    delivered = target.delivered(mark)
    lat = latency_summary(target.latencies(mark))
    groups = sampler.report()
    total_cpu = sum(g["cpu_s"] for name, g in groups.items() if name != "load")
    row: dict[str, Any] = {
        "target": target.name,
        "family": target.family,
        "size": size,
        "sessions": sessions,
        "sent": count,
        "accepted": accepted,
        "accept_s": round(accept_s, 3),
        "accepted_rate": round(accepted / accept_s, 1),
        "delivered": delivered,
        "complete": bool(done),
        "e2e_s": round(e2e_s, 3),
        "e2e_rate": round(min(delivered, want) / target.copies_per_message / e2e_s, 1)
        if target.family != "sink"
        else round(accepted / accept_s, 1),
        "latency": lat,
        "groups": groups,
        "cpu_ms_per_msg": {
            name: round(g["cpu_s"] / max(accepted, 1) * 1000, 3) for name, g in groups.items()
        },
        "cpu_ms_per_msg_total": round(total_cpu / max(accepted, 1) * 1000, 3),
        # everything the machine did in the window, the bench itself included
        "box_cpu_s": round(box_s, 3),
    }
    if requests_before is not None and requests_after is not None:
        # every client of the broker in the window: this target's stages (others are stopped)
        row["kafka_requests_per_msg"] = {
            api: round(n, 3)
            for api, n in per_message(requests_before, requests_after, accepted).items()
        }
    if probe is not None:
        row["stall"] = probe.summary()
    if ingest_port and loop_before is not None:
        after = loop_lag(ingest_port)
        delta = {k: after[k] - loop_before[k] for k in after}
        if delta["intervals"]:  # 0: code without the lag monitor (a --baseline)
            row["loop"] = {
                "intervals": int(delta["intervals"]),
                "lag_over_100ms": int(delta["intervals"] - delta["lag_le_100ms"]),
                "busy_over_100ms": int(delta["intervals"] - delta["busy_le_100ms"]),
            }
    notes = []
    groups_cpu = sum(g["cpu_s"] for g in groups.values())
    if over_box(groups_cpu, box_s):
        notes.append(f"sampler counted {groups_cpu:.1f} CPU s, the machine did {box_s:.1f}")
    if accepted < count:
        notes.append(f"{count - accepted} of {count} not accepted")
    if not done:
        notes.append(f"drain timed out at {delivered}/{want}")
    if notes:
        row["note"] = "; ".join(notes)
    return row


# -- report ------------------------------------------------------------------------------------------


def _loop_cell(loop: dict[str, int] | None) -> str:
    if not loop:
        return "-"
    return f"{loop['lag_over_100ms']} / {loop['busy_over_100ms']} of {loop['intervals']}"


# unmeasured work for a fresh broker before the first target: points of 10,000 1 KB messages
# through every stage's Kafka part (the floor's roles), paced as the targets load it (requests
# of a message or two: run flat out, the floor batches and warms another path), until the
# broker's CPU per message settles
BROKER_WARMUP_MESSAGES = 10_000
BROKER_WARMUP_RATE = 1000.0
BROKER_WARMUP_POINTS = 6
BROKER_SETTLED = 0.1  # two points in a row within 10 % of each other


def warm_broker(bootstrap: str, kafka_pid: int) -> list[float]:
    """Run the broker in until its CPU per message stops falling; the broker's ms per message
    of each warm-up point.

    Without it the first mailjournal target paid the broker's warm-up on every A/B: Kafka CPU
    0.43 / 0.52 / 0.40 / 0.45 / 0.38 ms per 1 KB message for the first target against 0.30 /
    0.36 / 0.28 / 0.28 / 0.30 for the next, in five runs. It is the JVM's C2 compiler still at
    work (15 % of the broker's CPU during the first target), not the heap or the metrics agent."""
    from bench.bench_floor import floor_point

    seen: list[float] = []
    for _ in range(BROKER_WARMUP_POINTS):
        row = floor_point(
            bootstrap,
            kafka_pid,
            1024,
            BROKER_WARMUP_MESSAGES,
            "carry",
            relay=True,
            rate=BROKER_WARMUP_RATE,
        )
        seen.append(row["cpu_ms_per_msg"]["kafka"])
        if settled(seen):
            break
    return seen


# unmeasured points of 1 KB through a throwaway mailjournal target of each topology in the run
# (journal only; journal + relay), until the broker's JIT compilers have settled: two points in
# a row in which they took at most this share of the broker's CPU
RUN_IN_SECONDS = 10.0
RUN_IN_POINTS = 20
RUN_IN_JIT_SHARE = 0.05


def jit_cpu_seconds(pid: int) -> float:
    """CPU seconds the JVM ``pid``'s compiler threads (C1, C2) have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            if not comm.startswith(("C1 Compiler", "C2 Compiler")):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def run_in(
    target: MailjournalTarget, sessions: int, drain_timeout: float
) -> list[tuple[float, float]]:
    """Load a throwaway ``target`` with points of 1 KB until the broker's JIT has settled; per
    point, the pipeline's CPU ms per message (stages and Kafka) and the JIT's share of the
    broker's CPU.

    The broker's JVM compiles for minutes, not seconds. Through a fresh broker at 1 KB its
    compiler threads took 5.7 of the broker's 8.1 CPU seconds in the first 10-second point,
    2.2 of 5.3 in the second, and under 5 % only from the ninth point on (about 100 s of load).
    warm_broker's 50 s and a target's own 8 s warm-up were not enough: in A/A/A/A runs
    (identical targets one after another) the first cost 0.98 and 1.12 ms per message against
    0.89-0.91 and 0.98-1.00 for the others, its Kafka 0.25-0.29 against 0.19-0.22. So every
    A/B favoured whichever code ran second, by 10-12 %. After this run-in, the first of two or
    three identical targets cost 0.97 against 0.95, and 1.07 against 1.06 and 1.07; once, 1.07
    against 0.93: what is left is the box's own noise, so a 1 KB A/B still wants both orders."""
    assert target.kafka_pid is not None
    seen: list[tuple[float, float]] = []
    for _ in range(RUN_IN_POINTS):
        jit0 = jit_cpu_seconds(target.kafka_pid)
        row = run_point(target, 1024, RUN_IN_SECONDS, sessions, drain_timeout)
        jit = jit_cpu_seconds(target.kafka_pid) - jit0
        broker = row["groups"].get("kafka", {}).get("cpu_s") or 0.0
        seen.append((row["cpu_ms_per_msg_total"], jit / broker if broker else 1.0))
        if len(seen) >= 2 and all(share <= RUN_IN_JIT_SHARE for _, share in seen[-2:]):
            break
    return seen


def settled(values: list[float], within: float = BROKER_SETTLED) -> bool:
    """The last two of ``values`` differ by at most ``within`` of the larger (pure)."""
    if len(values) < 2:
        return False
    a, b = values[-2:]
    return abs(a - b) <= within * max(a, b)


def run_floor(
    rows: list[dict[str, Any]], bootstrap: str, kafka_pid: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The Kafka floor of each size in both copy forms, on the run's broker once every target
    has stopped, paced at the e2e goal when this run has a Postfix point of the size."""
    from bench.bench_floor import MODES, floor_point
    from bench.bench_hops import hop_point

    postfix = {r["size"]: r for r in rows if r["target"] == "postfix"}
    out = []
    for size in args.size_list:
        ref = postfix.get(size)
        rate = ref["e2e_rate"] * E2E_GOAL.get(size, 2.0) if ref else None
        count = max(500, int((rate or size_guess(RATE_GUESS["mailjournal"], size)) * args.seconds))
        # the SMTP hops in Python at their least (bench/bench_hops.py), once per size
        hops = {hop: hop_point(hop, size, count)["cpu_ms_per_msg"] for hop in ("receive", "send")}
        print(f"== SMTP hop floor {human(size)}: {hops} CPU ms/msg", flush=True)
        for mode in MODES:
            row = floor_point(bootstrap, kafka_pid, size, count, mode, relay=args.relay, rate=rate)
            row["hops"] = hops
            print(
                f"== {row['target']} {human(size)}: {row['accepted_rate']:.0f}/s, CPU "
                f"{row['cpu_ms_per_msg_total']:.2f} ms/msg ({row['cpu_ms_per_msg']})",
                flush=True,
            )
            out.append(row)
    return out


# what each stage does besides its Kafka part: the SMTP hop it owns (ingest receives; delivery and
# the relay each send; the journal worker has none)
STAGE_HOPS = {"ingest": "receive", "delivery": "send", "relay": "send"}


def stage_hop(row: dict[str, Any], stage: str) -> float:
    """The SMTP hop floor of ``stage`` in a floor row (0 for a stage without one; pure)."""
    return float((row.get("hops") or {}).get(STAGE_HOPS.get(stage, ""), 0.0))


def hop_total(row: dict[str, Any]) -> float:
    """The SMTP hops' floor of a floor row's stages (pure)."""
    return sum(stage_hop(row, stage) for stage in row["cpu_ms_per_msg"])


def stage_floors(rows: list[dict[str, Any]]) -> str:
    """Per size and stage of the journal + relay target (journal only without it): its CPU per
    message, its floor (its Kafka role in the carrying form plus its SMTP hop) and the rest,
    which is the stage's own code (pure)."""
    floor = {r["size"]: r for r in rows if r["family"] == "floor" and r["mode"] == "carry"}
    measured: dict[int, dict[str, Any]] = {}
    for name in ("mailjournal", "mailjournal+relay"):  # the relay target wins when both ran
        measured.update({r["size"]: r for r in rows if r["target"] == name})
    out = []
    for size in sorted(set(floor) & set(measured)):
        f, m = floor[size], measured[size]
        for stage in (s for s in m["cpu_ms_per_msg"] if s in f["cpu_ms_per_msg"]):
            ours = m["cpu_ms_per_msg"][stage]
            least = f["cpu_ms_per_msg"][stage] + stage_hop(f, stage)
            out.append(
                [
                    human(size),
                    m["target"],
                    stage,
                    f"{ours:.3f}",
                    f"{least:.3f}",
                    f"{ours - least:.3f}",
                ]
            )
    headers = ["size", "target", "stage", "CPU ms/msg", "floor (Kafka + SMTP hop)", "own code"]
    return markdown_table(headers, out) if out else ""


def floors(rows: list[dict[str, Any]]) -> str:
    """Per size: Postfix's CPU per message, the goal's budget, and the Kafka floor of each copy
    form against it (after :func:`run_floor`)."""
    postfix = {r["size"]: r for r in rows if r["target"] == "postfix"}
    floor = {(r["size"], r["mode"]): r for r in rows if r["family"] == "floor"}
    out = []
    for size in sorted({s for s, _ in floor}):
        ref = postfix.get(size)
        theirs = ref["cpu_ms_per_msg"].get("postfix") if ref else None
        cells: list[object] = [human(size), fmt(theirs, 2)]
        cells.append(fmt(theirs * CPU_GOAL, 2) if theirs else "-")
        for mode in ("carry", "reference"):
            r = floor.get((size, mode))
            if r is None:
                cells.append("-")
                continue
            ms = r["cpu_ms_per_msg_total"]
            ratio = f" ({ms / theirs:.2f}x)" if theirs else ""
            cell = f"{ms:.2f}{ratio}, kafka {r['cpu_ms_per_msg']['kafka']:.2f}"
            if r.get("hops"):
                with_hops = ms + hop_total(r)
                ratio = f" ({with_hops / theirs:.2f}x)" if theirs else ""
                cell += f"; with the SMTP hops {with_hops:.2f}{ratio}"
            cells.append(cell)
        pace = next((r["paced"] for (s, _), r in floor.items() if s == size), None)
        cells.append(fmt(pace) if pace else "unpaced")
        out.append(cells)
    headers = [
        "size",
        "Postfix CPU ms/msg",
        f"budget ({CPU_GOAL:g}x)",
        "floor, copy carries the message (ms, vs Postfix)",
        "floor, copy references it",
        "paced at msgs/s",
    ]
    return markdown_table(headers, out) if out else ""


def add_ratios(rows: list[dict[str, Any]]) -> None:
    by = {(r["target"], r["size"]): r for r in rows}
    for r in rows:
        if r["family"] == "floor":
            continue  # no SMTP: its rate is the pace it was given
        for ref in ("postfix", "sink"):
            other = by.get((ref, r["size"]))
            if other is None or r["target"] == ref:
                continue
            r[f"accepted_vs_{ref}"] = round(r["accepted_rate"] / other["accepted_rate"], 2)
            if ref == "postfix":
                r["e2e_vs_postfix"] = round(r["e2e_rate"] / other["e2e_rate"], 2)


# issue 17's goals against Postfix (journal + relay is Postfix's job; the journal-only target is
# shown too): e2e rate ratio, CPU per message of our stages and Kafka, every stage's peak RSS
E2E_GOAL = {1024 * 1024: 1.5}  # by size; 2x elsewhere
CPU_GOAL = 0.5
RSS_GOAL_MB = 300.0
NOT_STAGES = ("load", "smtp-sink", "kafka")  # the load and its sink are not ours; Kafka not a stage


def goals(rows: list[dict[str, Any]]) -> str:
    """The goals table: one line per mailjournal target and size that has a Postfix point
    (after :func:`add_ratios`)."""
    postfix = {r["size"]: r for r in rows if r["target"] == "postfix"}
    out = []
    for r in rows:
        ref = postfix.get(r["size"])
        e2e = r.get("e2e_vs_postfix")  # add_ratios'
        if r["family"] != "mailjournal" or ref is None or e2e is None:
            continue
        cpu = r["cpu_ms_per_msg"]
        ours = sum(v for k, v in cpu.items() if k not in ("load", "smtp-sink"))
        theirs = ref["cpu_ms_per_msg"].get("postfix") or 0.0
        e2e_goal = E2E_GOAL.get(r["size"], 2.0)
        stage_rss = {k: g["peak_rss_mb"] for k, g in r["groups"].items() if k not in NOT_STAGES}
        top = max(stage_rss, key=stage_rss.__getitem__) if stage_rss else None
        cells = [
            r["target"],
            human(r["size"]),
            f"{e2e:.2f} (≥ {e2e_goal:g}) {'yes' if e2e >= e2e_goal else 'no'}",
        ]
        if theirs:
            ratio = ours / theirs
            cells.append(f"{ratio:.2f} (≤ {CPU_GOAL:g}) {'yes' if ratio <= CPU_GOAL else 'no'}")
        else:
            cells.append("-")
        if top is None:
            cells.append("-")
        else:
            rss = stage_rss[top]
            met = "yes" if rss <= RSS_GOAL_MB else "no"
            cells.append(f"{top} {rss:.0f} (≤ {RSS_GOAL_MB:.0f}) {met}")
        out.append(cells)
    headers = ["target", "size", "e2e vs Postfix", "CPU vs Postfix", "largest stage RSS MB"]
    return markdown_table(headers, out) if out else ""


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "target",
        "size",
        "accepted/s",
        "e2e/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "CPU ms/msg (per stage)",
        "Kafka req/msg (top APIs)",
        "peak RSS MB",
        "acc vs Postfix",
        "e2e vs Postfix",
        "acc vs sink",
        "ingest NOOP max ms",
        "loop >100 ms: lag / busy",
    ]
    out = []
    for r in rows:
        lat = r["latency"]
        stages = ", ".join(
            f"{k} {v:.2f}" for k, v in r["cpu_ms_per_msg"].items() if k not in ("smtp-sink",)
        )
        rss = ", ".join(f"{k} {g['peak_rss_mb']:.0f}" for k, g in r["groups"].items())
        out.append(
            [
                r["target"],
                human(r["size"]),
                fmt(r["accepted_rate"]),
                fmt(r["e2e_rate"]) + ("" if r["complete"] else "*"),
                fmt(_ms(lat["p50_s"])),
                fmt(_ms(lat["p95_s"])),
                fmt(_ms(lat["p99_s"])),
                stages,
                requests_summary(r.get("kafka_requests_per_msg") or {}, top=3),
                rss,
                fmt(r.get("accepted_vs_postfix"), 2),
                fmt(r.get("e2e_vs_postfix"), 2),
                fmt(r.get("accepted_vs_sink"), 2),
                fmt((r.get("stall") or {}).get("noop_max_ms")),
                _loop_cell(r.get("loop")),
            ]
        )
    return markdown_table(headers, out)


def chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    rows = [r for r in rows if r["family"] != "floor"]  # no SMTP, no latency: not comparable
    targets = list(dict.fromkeys(r["target"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    by = {(r["target"], r["size"]): r for r in rows}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    width = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        xs = [j + i * width for j in range(len(sizes))]
        for ax, key in ((axes[0], "accepted_rate"), (axes[1], "e2e_rate")):
            ax.bar(xs, [by[(t, s)][key] if (t, s) in by else 0 for s in sizes], width, label=t)
        p99 = [(by[(t, s)]["latency"]["p99_s"] or 0) * 1000 if (t, s) in by else 0 for s in sizes]
        axes[2].bar(xs, p99, width, label=t)
    titles = ("accepted msgs/s", "end-to-end journaled msgs/s", "end-to-end p99 latency (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))])
        ax.set_xticklabels([human(s) for s in sizes])
        ax.set_title(title)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("mailjournal vs Postfix (recipient_bcc_maps) vs smtp-sink, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- main --------------------------------------------------------------------------------------------


def git_tree(ref: str, dest: Path) -> Path:
    """The files of ``ref`` (``git archive``; the work tree is not touched)."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    if (dest / "setup.py").exists():
        # its native parts, built in place as the editable install does for the working tree
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dest, check=True
        )
    return dest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run_all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: ~3 s per point, 1 KB+100 KB")
    ap.add_argument("--seconds", type=float, default=20.0, help="load per point (default 20)")
    ap.add_argument("--sizes", help="comma-separated body sizes in bytes")
    ap.add_argument("--targets", default="sink,postfix,mailjournal")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--ingest-workers", type=int, default=2)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="config override for the mailjournal target, e.g. delivery.concurrency=32",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=JSON,KEY=JSON",
        help="also run mailjournal-NAME with these overrides (A/B in the same invocation)",
    )
    ap.add_argument(
        "--baseline",
        metavar="REF",
        help="also run mailjournal@REF (git archive; with --relay also mailjournal+relay@REF)",
    )
    ap.add_argument("--relay", action="store_true", help="also the journal + relay target")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also the Kafka floor (bench/bench_floor.py) per size, paced at the e2e goal",
    )
    ap.add_argument(
        "--delivery-procs",
        type=int,
        default=1,
        metavar="N",
        help="deliver processes per mailjournal target (one consumer group; default 1)",
    )
    ap.add_argument(
        "--delivery-procs-ab",
        action="store_true",
        help="also run mailjournal-2deliver (two deliver processes) beside the default target",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=8.0,
        metavar="S",
        help="seconds of 1 KB load on each target before its first point (default 8)",
    )
    ap.add_argument(
        "--run-in",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before the first target, run a throwaway mailjournal target of each topology in "
        "until the broker's JIT has settled (default on; off with --quick)",
    )
    ap.add_argument(
        "--order",
        choices=("given", "random"),
        default="given",
        help="run the targets as listed, or shuffled (the seed is printed; --seed)",
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    if args.sizes:
        args.size_list = [int(s) for s in args.sizes.split(",")]
    else:
        args.size_list = [1024, 100 * 1024] if args.quick else list(DEFAULT_SIZES)
    if args.seed is None:
        args.seed = int(time.time()) % 100_000
    if args.quick:
        args.seconds = min(args.seconds, 3.0)
        args.warmup = min(args.warmup, 2.0)
        args.run_in = False
        args.drain_timeout = min(args.drain_timeout, 120.0)
    return args


def overrides_from(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        if parts[:2] in (["kafka", "consumer"], ["kafka", "producer"]):
            parts = [*parts[:2], ".".join(parts[2:])]  # librdkafka property names hold dots
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools((SMTP_SOURCE, SMTP_SINK, POSTFIX))
    if missing:
        print(
            f"missing {', '.join(missing)}: install the Debian package postfix "
            "(make sysdeps does; the benchmark never touches the system's Postfix)",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(ROOT))
    from devtools.kafka_local import KafkaLocal, free_ports

    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    work = Path(tempfile.mkdtemp(prefix="mailjournal-bench-"))
    work.chmod(0o755)  # the private Postfix's daemons run as user postfix
    started = time.strftime("%Y%m%d-%H%M%S")
    kafka: KafkaLocal | None = None
    targets: list[Target] = []
    rows: list[dict[str, Any]] = []
    broker: BrokerRequests | None = None
    interrupted = False
    run_ins: dict[str, list[tuple[float, float]]] = {}

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        (sink_port,) = free_ports(1)
        with smtp_sink(sink_port) as sink:
            bootstrap, kafka_pid = "", None
            # the mailjournal topologies of the run: journal only (False), journal + relay (True)
            topologies = [
                relay
                for relay, present in (
                    (
                        False,
                        "mailjournal" in wanted
                        or args.variant
                        or args.baseline
                        or args.delivery_procs_ab,
                    ),
                    (True, args.relay),
                )
                if present
            ]
            if (
                any(t.startswith("mailjournal") for t in wanted)
                or args.baseline
                or args.relay
                or args.floor
                or args.variant
                or args.delivery_procs_ab
            ):
                kafka = KafkaLocal(work / "kafka", brokers=1, die_with_parent=True)
                t0 = time.monotonic()
                bootstrap = kafka.up()
                kafka_pid = kafka.brokers[min(kafka.brokers)].pid
                print(f"kafka {bootstrap} up in {time.monotonic() - t0:.0f} s", flush=True)
                if kafka_pid is not None and not (args.run_in and topologies):
                    t0 = time.monotonic()
                    seen = warm_broker(bootstrap, kafka_pid)
                    print(
                        f"   broker warmed in {time.monotonic() - t0:.0f} s (unmeasured; its CPU "
                        f"ms per message, point by point: {', '.join(f'{v:.2f}' for v in seen)})",
                        flush=True,
                    )
            factories: list[Callable[[], Target]] = []
            for t in wanted:
                if t == "sink":
                    factories.append(lambda: SinkTarget(sink_port, sink.pid))
                elif t == "postfix":
                    factories.append(lambda: PostfixTarget(sink_port, sink.pid))
                elif t == "mailjournal":
                    factories.append(
                        lambda: MailjournalTarget(
                            sink_port,
                            sink.pid,
                            name="mailjournal",
                            bootstrap=bootstrap,
                            kafka_pid=kafka_pid,
                            ingest_workers=args.ingest_workers,
                            delivery_procs=args.delivery_procs,
                            overrides=overrides_from(args.set),
                        )
                    )
                else:
                    raise SystemExit(f"unknown target {t!r}")
            for spec in args.variant:
                vname, _, sets = spec.partition(":")
                factories.append(
                    functools.partial(
                        MailjournalTarget,
                        sink_port,
                        sink.pid,
                        name=f"mailjournal-{vname}",
                        bootstrap=bootstrap,
                        kafka_pid=kafka_pid,
                        ingest_workers=args.ingest_workers,
                        delivery_procs=args.delivery_procs,
                        overrides=overrides_from(args.set + sets.split(",")),
                    )
                )
            if args.delivery_procs_ab:
                factories.append(
                    lambda: MailjournalTarget(
                        sink_port,
                        sink.pid,
                        name="mailjournal-2deliver",
                        bootstrap=bootstrap,
                        kafka_pid=kafka_pid,
                        ingest_workers=args.ingest_workers,
                        overrides=overrides_from(args.set),
                        delivery_procs=2,
                    )
                )
            if args.baseline:
                tree = git_tree(args.baseline, work / "baseline-tree")
                factories.append(
                    lambda: MailjournalTarget(
                        sink_port,
                        sink.pid,
                        name=f"mailjournal@{args.baseline}",
                        bootstrap=bootstrap,
                        kafka_pid=kafka_pid,
                        tree=tree,
                        ingest_workers=args.ingest_workers,
                        delivery_procs=args.delivery_procs,
                    )
                )
            if args.relay:
                # Postfix's job; with --baseline its before/after too
                relay_trees = [("mailjournal+relay", ROOT)]
                if args.baseline:
                    relay_trees.append((f"mailjournal+relay@{args.baseline}", tree))
                for relay_name, relay_tree in relay_trees:
                    factories.append(
                        functools.partial(
                            MailjournalTarget,
                            sink_port,
                            sink.pid,
                            name=relay_name,
                            bootstrap=bootstrap,
                            kafka_pid=kafka_pid,
                            tree=relay_tree,
                            ingest_workers=args.ingest_workers,
                            delivery_procs=args.delivery_procs,
                            relay=True,
                        )
                    )
            if kafka_pid is not None:
                broker = BrokerRequests(kafka_pid)
                # attaching loads the JVM's management agent into the broker: its cost falls here,
                # unmeasured (it was not the first target's extra Kafka CPU: see warm_broker)
                broker.snapshot()
            for relay in topologies if args.run_in and kafka_pid is not None else []:
                warm = MailjournalTarget(
                    sink_port,
                    sink.pid,
                    name="run-in+relay" if relay else "run-in",
                    bootstrap=bootstrap,
                    kafka_pid=kafka_pid,
                    ingest_workers=args.ingest_workers,
                    delivery_procs=args.delivery_procs,
                    relay=relay,
                )
                targets.append(warm)
                t0 = time.monotonic()
                warm.start(work)
                ran_in = run_in(warm, args.sessions, args.drain_timeout)
                warm.stop()
                run_ins[warm.name] = ran_in
                print(
                    f"== {warm.name}: {time.monotonic() - t0:.0f} s, unmeasured; point by point, "
                    "CPU ms per message (the broker's JIT share of its CPU): "
                    + ", ".join(f"{cpu:.2f} ({share:.0%})" for cpu, share in ran_in),
                    flush=True,
                )
            if args.order != "given":
                print(f"target order: {args.order}, seed {args.seed}", flush=True)
            picked = target_order([str(i) for i in range(len(factories))], args.order, args.seed)
            for make in (factories[i] for i in picked):
                target = make()
                targets.append(target)
                try:
                    target.start(work)
                except Exception as exc:  # one target that cannot start must not lose the rest
                    print(f"== {target.name}: not started: {exc}", file=sys.stderr, flush=True)
                    target.stop()
                    continue
                print(f"== {target.name} on port {target.port}", flush=True)
                spent = warm_up(target, args.warmup, args.sessions, args.drain_timeout)
                if spent:
                    print(f"   warm-up {spent:.0f} s", flush=True)
                for size in args.size_list:
                    row = run_point(
                        target,
                        size,
                        args.seconds,
                        args.sessions,
                        args.drain_timeout,
                        broker if target.family == "mailjournal" else None,
                    )
                    rows.append(row)
                    lat = row["latency"]
                    print(
                        f"   {human(size):>6}: accepted {row['accepted_rate']:8.1f}/s  e2e "
                        f"{row['e2e_rate']:8.1f}/s  p99 {fmt(_ms(lat['p99_s']))} ms  CPU "
                        f"{row['cpu_ms_per_msg_total']:.2f} ms/msg  Kafka req/msg "
                        f"{requests_summary(row.get('kafka_requests_per_msg') or {}, top=3)}  "
                        f"{row.get('note', '')}",
                        flush=True,
                    )
                target.stop()
            if args.floor and kafka_pid is not None:
                rows.extend(run_floor(rows, bootstrap, kafka_pid, args))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping everything", file=sys.stderr)
    finally:
        for target in targets:
            with contextlib.suppress(Exception):
                target.stop()
        if broker is not None:
            broker.close()
        if kafka is not None:
            kafka.down()
        if not interrupted and not os.environ.get("BENCH_KEEP"):
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if not rows:
        return 130 if interrupted else 1
    add_ratios(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{started}{'-quick' if args.quick else ''}"
    meta = {
        "started": started,
        "argv": sys.argv[1:] if argv is None else argv,
        "seconds_per_point": args.seconds,
        "sessions": args.sessions,
        "ingest_workers": args.ingest_workers,
        "delivery_procs": args.delivery_procs,
        "cpus": os.cpu_count(),
        "overrides": overrides_from(args.set),
        "variants": args.variant,
        "warmup_s": args.warmup,
        "run_in_cpu_ms_per_msg_and_jit_share": run_ins,
        "order": args.order,
        "seed": args.seed,
        "interrupted": interrupted,
    }
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = table(rows)
    if goal_table := goals(rows):
        md += f"\n\nGoals (issue 17; the RSS goal is at 1 MB):\n\n{goal_table}"
    if floor_table := floors(rows):
        md += (
            "\n\nThe Kafka floor (bench/bench_floor.py: the stages' Kafka work alone, broker "
            "included, CPU ms per message), and with the SMTP hops in Python at their least "
            f"(bench/bench_hops.py: one receive, two sends):\n\n{floor_table}"
        )
    if stage_table := stage_floors(rows):
        md += f"\n\nPer stage, what its floor leaves to its own code:\n\n{stage_table}"
    stem.with_suffix(".md").write_text(
        f"# bench {started}\n\n{json.dumps(meta)}\n\n{md}\n\n"
        "`*` e2e did not complete within the drain timeout. CPU ms/msg per stage includes the "
        "load generator (`load`); peak RSS per process group.\n"
    )
    has_chart = chart(rows, stem.with_suffix(".png"))
    print()
    print(md)
    print(f"\nwrote {stem}.json, .md{', .png' if has_chart else ''}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
