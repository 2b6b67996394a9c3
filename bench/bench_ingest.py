"""Benchmark of ingest against Postfix's smtp-sink, same machine, same run.

Drives Postfix's ``smtp-source`` (20 sessions by default) at 1 KB, 10 KB, 100 KB and 1 MB against
(a) ``smtp-sink``, the SMTP protocol limit on this machine, and (b) ``mailjournal ingest`` on a
local real Kafka (started here with ``KafkaLocal`` unless ``--bootstrap`` is given), and prints
accepted msgs/s, peak RSS and the ratio ingest/sink per size. Goal: ratio >= 0.5 at every size.

``--postfix`` adds (c) a private Postfix (``bench/postfix_peer.py``: ``recipient_bcc_maps``
journaling, relaying to the sink): its accept-into-queue rate is what ingest alone is compared
with (issue 17: ingest >= 3x Postfix at 1 KB); CPU ms per accepted message is printed for both.
``--baseline REF`` first measures ingest from ``git archive REF`` on the same Kafka and topic
(printed; the table is the work tree's).

    .venv/bin/python bench/bench_ingest.py [--workers 2] [--seconds 8] [--sizes 1024,10240]
        [--postfix] [--baseline main]

"accepted" for ingest is what its metrics count as answered 250 (after Kafka's acknowledgement);
the run also checks that the messages topic holds at least as many records.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    DEFAULT_SIZES,
    SMTP_SINK,
    SMTP_SOURCE,
    ProcSampler,
    count_for,
    metric_value,
    run_source,
    smtp_sink,
    wait_for,
    wait_port,
)
from bench.common import human as _human  # noqa: E402
from devtools.kafka_local import KafkaLocal, free_ports  # noqa: E402


def write_config(path: Path, bootstrap: str, port: int, metrics_port: int, topic: str) -> None:
    path.write_text(
        f"""
[organization]
accepted_domains = ["corp.example"]
trusted_networks = ["10.0.0.0/8"]

[journal.inbound]
address = "journal-in@corp.example"
ndr_address = "journal-ndr@corp.example"

[kafka]
bootstrap_servers = "{bootstrap}"

[kafka.topics.messages]
name = "{topic}"
partitions = 6

[ingest]
hostname = "bench.corp.example"
max_connections = 2000
max_connections_per_client = 2000

[[ingest.listeners]]
name = "mx"
host = "127.0.0.1"
port = {port}

[metrics]
ingest_port = {metrics_port}

[logging]
level = "WARNING"
"""
    )


@contextlib.contextmanager
def ingest_process(
    config: Path, workers: int, port: int, tree: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "mailjournal", "ingest", "--config", str(config)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen(cmd, cwd=tree, env=env)
    try:
        wait_port(port, 60)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting a local one")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=8.0, help="target duration per run")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument(
        "--reuse", action="store_true", help="smtp-source -d: several messages per connection"
    )
    ap.add_argument("--postfix", action="store_true", help="also Postfix's accept-into-queue")
    ap.add_argument("--baseline", metavar="REF", help="also ingest from git archive REF (A/B)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    extra = ["-d"] if args.reuse else []
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not Path(tool).exists():
            print(f"{tool} not found (Debian package postfix)", file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    workdir.chmod(0o755)  # a private Postfix's daemons (user postfix) reach their directories
    kafka: KafkaLocal | None = None
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            kafka = KafkaLocal(workdir / "kafka", brokers=1, die_with_parent=True)
            t0 = time.monotonic()
            bootstrap = kafka.up()
            print(f"kafka {bootstrap} up in {time.monotonic() - t0:.1f}s")
        sink_port, ingest_port, metrics_port = free_ports(3)
        topic = f"bench.messages.{os.getpid()}"
        cfg_path = workdir / "ingest.toml"
        write_config(cfg_path, bootstrap, ingest_port, metrics_port, topic)
        subprocess.run(
            [sys.executable, "-m", "mailjournal", "topics", "ensure", "--config", str(cfg_path)],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )

        results: dict[int, dict[str, float]] = {}
        with smtp_sink(sink_port) as sink:
            sampler = ProcSampler()
            sampler.add("sink", sink.pid)
            for size in sizes:
                run_source(sink_port, size, 200, args.sessions, extra)  # warm-up
                count = count_for(size, args.seconds, 4000 if size <= 10240 else 200_000_000 / size)
                with sampler:
                    elapsed = run_source(sink_port, size, count, args.sessions, extra)
                results[size] = {
                    "sink_rate": count / elapsed,
                    "sink_rss": sampler.groups["sink"].peak_rss,
                }
                print(f"smtp-sink  {size:>8} B: {count / elapsed:8.0f} msgs/s")

            if args.postfix:
                from bench.postfix_peer import PostfixPeer

                (pf_port,) = free_ports(1)
                with PostfixPeer(workdir / "postfix", pf_port, sink_port) as peer:
                    run_source(pf_port, 1024, 500, args.sessions, extra)  # warm-up
                    for size in sizes:
                        guess = 300.0 if size <= 10240 else 30_000_000 / size
                        count = count_for(size, args.seconds, guess)
                        sampler = ProcSampler()
                        pid = peer.master_pid()
                        assert pid, "postfix master pid unknown"
                        sampler.add("postfix", pid)
                        with sampler:
                            elapsed = run_source(pf_port, size, count, args.sessions, extra)
                        results[size].update(
                            postfix_rate=count / elapsed,
                            postfix_cpu_ms=sampler.cpu("postfix") / count * 1000,
                        )
                        print(f"postfix    {size:>8} B: {count / elapsed:8.0f} msgs/s (accepted)")
                        wait_for(peer.queue_empty, 300, 0.5)  # the next size starts idle

            trees: list[tuple[str, Path]] = [("ingest", ROOT)]
            if args.baseline:
                from bench.run_all import git_tree

                trees.insert(0, (f"@{args.baseline}", git_tree(args.baseline, workdir / "base")))
            for label, tree in trees:
                with ingest_process(cfg_path, args.workers, ingest_port, tree) as ingest:
                    sampler = ProcSampler()
                    sampler.add("ingest", ingest.pid)
                    # the first seconds of a fresh ingest and topic are slower (Kafka connections,
                    # partition leaders, log segments): warm up before measuring anything
                    run_source(ingest_port, 1024, 3000, args.sessions, extra)
                    for size in sizes:
                        run_source(ingest_port, size, 100, args.sessions, extra)  # warm-up
                        guess = results[size]["sink_rate"] * 0.6
                        count = count_for(size, args.seconds, guess)
                        before = metric_value(
                            metrics_port, "mailjournal_ingest_messages_accepted_total"
                        )
                        with sampler:
                            elapsed = run_source(ingest_port, size, count, args.sessions, extra)
                        accepted = (
                            metric_value(metrics_port, "mailjournal_ingest_messages_accepted_total")
                            - before
                        )
                        if accepted < count:
                            print(
                                f"  warning: {count} sent, {accepted:.0f} accepted", file=sys.stderr
                            )
                        rate = accepted / elapsed
                        cpu_ms = sampler.cpu("ingest") / max(accepted, 1) * 1000
                        if label != "ingest":  # the baseline: printed, not in the table
                            rss = sampler.groups["ingest"].peak_rss / 2**20
                            print(
                                f"{label:<10} {size:>8} B: {rate:8.0f} msgs/s {cpu_ms:.2f} CPU ms"
                                f" peak RSS {rss:.1f} MB"
                            )
                            continue
                        results[size].update(
                            ingest_rate=rate,
                            ingest_rss=sampler.groups["ingest"].peak_rss,
                            ingest_cpu_ms=cpu_ms,
                        )
                        print(f"ingest     {size:>8} B: {rate:8.0f} msgs/s {cpu_ms:.2f} CPU ms")

        print()
        print(
            f"smtp-source -s {args.sessions}{' -d' if args.reuse else ''}; ingest --workers "
            f"{args.workers}; Kafka {bootstrap}"
        )
        print(
            f"{'size':>9} | {'smtp-sink msgs/s':>16} | {'ingest msgs/s':>13} | {'ratio':>6} | "
            f"{'sink peak RSS':>13} | {'ingest peak RSS':>15}"
        )
        ok = True
        for size in sizes:
            r = results[size]
            ratio = r["ingest_rate"] / r["sink_rate"]
            ok = ok and ratio >= 0.5
            print(
                f"{_human(size):>9} | {r['sink_rate']:16.0f} | {r['ingest_rate']:13.0f} | "
                f"{ratio:6.2f} | {r['sink_rss'] / 2**20:10.1f} MB | "
                f"{r['ingest_rss'] / 2**20:12.1f} MB"
            )
        print(f"goal ingest >= 0.5 x smtp-sink at every size: {'met' if ok else 'NOT met'}")
        if args.postfix:
            print()
            print(
                f"{'size':>9} | {'Postfix acc/s':>13} | {'ingest acc/s':>12} | {'ratio':>6} | "
                f"{'CPU ms/msg Postfix':>18} | {'CPU ms/msg ingest':>17}"
            )
            for size in sizes:
                r = results[size]
                print(
                    f"{_human(size):>9} | {r['postfix_rate']:13.0f} | {r['ingest_rate']:12.0f} | "
                    f"{r['ingest_rate'] / r['postfix_rate']:6.2f} | "
                    f"{r['postfix_cpu_ms']:18.2f} | {r['ingest_cpu_ms']:17.2f}"
                )
            if 1024 in results:
                r = results[1024]
                met = r["ingest_rate"] >= 3 * r["postfix_rate"]
                print(
                    f"goal ingest >= 3 x Postfix accept-into-queue at 1 KB: {'met' if met else 'NOT met'}"
                )
        return 0
    finally:
        if kafka is not None:
            kafka.down()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
