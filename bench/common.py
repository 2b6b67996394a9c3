"""Shared pieces of the benchmarks: tools, ports, Postfix's smtp-source/smtp-sink, process CPU and
RSS sampling (psutil), Prometheus scraping, percentiles and result tables."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SENDER = "bench@example.org"
RECIPIENT = "user@corp.example"
# the body line smtp-source sends, which make bench's messages are made of
SOURCE_LINE = b"La de da de da 1.\r\n"
DEFAULT_SIZES = (1024, 10 * 1024, 100 * 1024, 1024 * 1024)


def missing_tools(tools: Iterable[str] = (SMTP_SOURCE, SMTP_SINK, POSTFIX)) -> list[str]:
    return [t for t in tools if not Path(t).exists()]


def human(size: int) -> str:
    if size >= 2**20:
        return f"{size // 2**20} MB"
    if size >= 1024:
        return f"{size // 1024} KB"
    return f"{size} B"


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- Postfix's load generator and sink ------------------------------------------------------------


def source_argv(
    port: int,
    size: int,
    count: int,
    sessions: int = 20,
    *,
    sender: str = SENDER,
    recipient: str = RECIPIENT,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        SMTP_SOURCE,
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-l",
        str(size),
        "-f",
        sender,
        "-t",
        recipient,
        *extra,
        f"127.0.0.1:{port}",
    ]


def run_source(
    port: int,
    size: int,
    count: int,
    sessions: int = 20,
    extra: Sequence[str] = (),
    *,
    sampler: ProcSampler | None = None,
    timeout: float | None = None,
) -> float:
    """Send ``count`` messages of ``size`` body bytes over ``sessions`` parallel sessions; returns
    the wall time. The generator's own CPU is sampled as group ``load`` when a sampler is given."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        source_argv(port, size, count, sessions, extra=extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if sampler is not None:
        sampler.add("load", proc.pid)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"smtp-source did not finish within {timeout} s") from None
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({proc.returncode}): {err.strip()[-2000:]}")
    return elapsed


def count_for(size: int, seconds: float, rate_guess: float) -> int:
    return max(50, int(rate_guess * seconds))


@contextlib.contextmanager
def smtp_sink(port: int, backlog: int = 1024) -> Iterator[subprocess.Popen[bytes]]:
    """Postfix's ``smtp-sink`` on 127.0.0.1:port: answers 250 to everything, stores nothing."""
    cmd = [SMTP_SINK]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    cmd += [f"127.0.0.1:{port}", str(backlog)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- Prometheus ----------------------------------------------------------------------------------


def metric_value(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (optionally only those carrying ``labels``)."""
    return sample_sum(metrics_text(port), name, labels)


def metrics_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def sample_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in one scrape's ``text``."""
    want = [f'{k}="{v}"' for k, v in (labels or {}).items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if (head == name or head.startswith(name + "{")) and all(w in head for w in want):
            total += float(value)
    return total


# -- CPU and RSS per group of processes ----------------------------------------------------------


@dataclass
class _Group:
    roots: list[int] = field(default_factory=list)
    base: dict[int, float] = field(default_factory=dict)  # pid -> cpu at first sight
    last: dict[int, float] = field(default_factory=dict)  # pid -> cpu last seen
    parent: dict[int, int] = field(default_factory=dict)  # pid -> its parent's pid
    alive: set[int] = field(default_factory=set)  # pids of the latest sample
    peak_rss: int = 0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu_per_call(fn: Callable[[], object], repeats: int) -> float:
    """CPU seconds of this thread per call of ``fn`` after one unmeasured call (not wall time:
    the machine may be shared)."""
    fn()
    start = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - start) / repeats


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (not of its reaped children)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _cpu_of(p: psutil.Process) -> float:
    t = p.cpu_times()
    # children_*: CPU of children this process has reaped (Postfix's master reaps its daemons)
    return t.user + t.system + t.children_user + t.children_system


def window_cpu(
    base: dict[int, float], last: dict[int, float], parent: dict[int, int], alive: set[int]
) -> float:
    """CPU seconds a process tree used between its first and last samples (pure).

    A process's figure includes what it has reaped (``children_*``), so a daemon that exits and
    is reaped by a parent still in the tree is counted by that parent, in full: counting its own
    last sample as well counted it twice (Postfix's master reaps a daemon after every
    ``max_use``). For such a process only what it had used before the window is taken off; one
    with no parent left in the tree counts up to its last sample."""
    total = 0.0
    for pid, cpu in last.items():
        if pid in alive or parent.get(pid) not in alive:
            total += cpu - base.get(pid, 0.0)
        else:
            total -= base.get(pid, 0.0)
    return max(0.0, total)


def box_busy_seconds() -> float:
    """CPU seconds every core of the machine has been busy since boot (``/proc/stat``): the
    independent check of the sampler's per-group figures, which can never add up to more."""
    t = psutil.cpu_times()
    # guest time is already inside user on Linux; idle and iowait are not work
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def over_box(groups_cpu_s: float, box_cpu_s: float) -> bool:
    """Whether the groups' CPU exceeds what the machine did, beyond sampling noise (pure)."""
    return groups_cpu_s > box_cpu_s * 1.05 + 0.2


class ProcSampler:
    """CPU seconds and peak RSS per named group of process trees, sampled every ``interval`` s.

    Each group is one or more root pids with all their descendants. CPU counts what every process
    used while the sampler ran (a process first seen later counts in full: it was born inside the
    window; one reaped inside the tree is counted by its parent, :func:`window_cpu`); a process
    that exits between two samples and is not reaped in the tree loses its last ``interval``."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.groups: dict[str, _Group] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.groups.setdefault(name, _Group()).roots.append(pid)
        if self._started:
            self._sample_group(name, self.groups[name], first=False)

    def _sample_group(self, name: str, g: _Group, *, first: bool) -> None:
        rss = 0
        alive: set[int] = set()
        for root in list(g.roots):
            try:
                top = psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    cpu = _cpu_of(p)
                    rss += p.memory_info().rss
                    ppid = p.ppid()
                except psutil.Error:
                    continue
                if p.pid not in g.base:
                    g.base[p.pid] = cpu if first else 0.0
                g.last[p.pid] = cpu
                g.parent[p.pid] = ppid
                alive.add(p.pid)
        g.alive = alive
        g.peak_rss = max(g.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                items = list(self.groups.items())
            for name, g in items:
                self._sample_group(name, g, first=False)

    def __enter__(self) -> ProcSampler:
        for name, g in self.groups.items():
            g.base.clear()
            g.last.clear()
            g.parent.clear()
            g.alive.clear()
            g.peak_rss = 0
            self._sample_group(name, g, first=True)
        self._started = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name, g in self.groups.items():
            self._sample_group(name, g, first=False)
        self._started = False

    def cpu(self, name: str) -> float:
        g = self.groups[name]
        return window_cpu(g.base, g.last, g.parent, g.alive)

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {"cpu_s": round(self.cpu(name), 3), "peak_rss_mb": round(g.peak_rss / 2**20, 1)}
            for name, g in self.groups.items()
        }


# -- statistics and tables -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    return {
        "n": len(seconds),
        "p50_s": percentile(seconds, 50),
        "p95_s": percentile(seconds, 95),
        "p99_s": percentile(seconds, 99),
        "max_s": max(seconds) if seconds else None,
    }


def fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
