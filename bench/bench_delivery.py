"""Delivery throughput: copies/s from a pre-filled journal topic to Postfix's ``smtp-sink``.

Starts a real single-node Kafka (``KafkaLocal``) in a temporary directory and ``smtp-sink`` on a
free port, fills the journal topic with journal copies of 1 KB and 100 KB originals (sent as
envelope journal reports), then runs one delivery worker (in this process) until every copy has
its DELIVERED outcome acknowledged. Prints, per size: copies/s over the whole run (including the
consumer group join) and in steady state (first to last delivery), MB/s of reports, CPU seconds
and peak RSS of this process.

    .venv/bin/python bench/bench_delivery.py [--count-1k 20000] [--count-100k 3000]
                                             [--count-1m 0] [--concurrency 16] [--kafka-dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import string
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from delivery.handler import DeliveryHandler
from delivery.report import build_report
from delivery.retry import tier_topics
from devtools.kafka_local import KafkaLocal
from mailjournal.config import Config
from mailjournal.consumer.loop import TieredConsumer
from mailjournal.topics import ensure_topics
from tests.fixtures.config import make_config
from tests.fixtures.delivery import ensure_retry_tiers, make_copy, produce_copies
from tests.fixtures.smtp import SmtpSink


def original_of(size: int, rng: random.Random) -> bytes:
    head = (
        b"From: Alice <alice@ext.example>\r\nTo: bob@corp.example\r\n"
        b"Subject: benchmark\r\nMessage-ID: <bench@ext.example>\r\n\r\n"
    )
    body = bytearray()
    alphabet = string.ascii_letters + string.digits + " "
    while len(head) + len(body) < size:
        body += "".join(rng.choices(alphabet, k=76)).encode() + b"\r\n"
    return head + bytes(body[: size - len(head)])


DELIVERY_EXTRA: dict[str, Any] = {}  # --max-inflight-bytes: [delivery] settings of the worker
CONSUMER_EXTRA: dict[str, Any] = {}  # --consumer KEY=VALUE: librdkafka settings of the worker


def bench_config(bootstrap: str, suffix: str, smtp_port: int, concurrency: int) -> Config:
    topics = {
        k: {"name": f"bench.{k}.{suffix}", "partitions": 6}
        for k in ("messages", "journal", "retry", "outcomes", "dead_letters")
    }
    return make_config(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topics": topics,
                "delivery_group": f"bench-delivery-{suffix}",
                "consumer": CONSUMER_EXTRA,
            },
            "delivery": {
                "smart_host": {"host": "127.0.0.1", "port": smtp_port},
                "concurrency": concurrency,
                "max_inflight": 512,
                **DELIVERY_EXTRA,
            },
            "metrics": {"delivery_port": 0},
        }
    )


def fill_topic(
    bootstrap: str, suffix: str, port: int, concurrency: int, size: int, count: int
) -> None:
    config = bench_config(bootstrap, suffix, port, concurrency)
    original = original_of(size, random.Random(size))
    produce_copies(config, [make_copy(original=original) for _ in range(count)])


def run_size(
    bootstrap: str, sink: SmtpSink, size: int, count: int, concurrency: int
) -> dict[str, Any]:
    suffix = f"{size}-{os.getpid()}"
    config = bench_config(bootstrap, suffix, sink.port, concurrency)
    ensure_topics(config)
    ensure_retry_tiers(config)
    report_bytes = len(
        build_report(make_copy(original=original_of(size, random.Random(size))), config)
    )
    # filled by another process, so this one's RSS is what a delivery process holds, not what
    # building 400 MB of copies left in its heap
    t0 = time.monotonic()
    filler = multiprocessing.get_context("spawn").Process(
        target=fill_topic, args=(bootstrap, suffix, sink.port, concurrency, size, count)
    )
    filler.start()
    filler.join()
    if filler.exitcode != 0:
        raise SystemExit(f"filling the journal topic failed: exit {filler.exitcode}")
    fill = time.monotonic() - t0

    handler = DeliveryHandler(config)
    worker = TieredConsumer(config, handler)
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    start_rss = peak_rss = proc.memory_info().rss
    thread = threading.Thread(target=worker.run, daemon=True)
    start = time.monotonic()
    thread.start()
    first = None
    # the clock stops when every copy is final: delivered and its outcome acknowledged by Kafka
    while worker.stats.finished < count:
        if first is None and handler.stats.delivered:
            first = time.monotonic()
        peak_rss = max(peak_rss, proc.memory_info().rss)
        time.sleep(0.01)
        if time.monotonic() - start > 900:
            raise SystemExit(f"timed out: {worker.stats} {handler.stats}")
    end = time.monotonic()
    assert handler.stats.delivered == count, handler.stats
    worker.stop()
    thread.join()
    cpu1 = proc.cpu_times()
    first = first or start
    steady = max(end - first, 1e-9)
    return {
        "size": size,
        "count": count,
        "fill_s": fill,
        "wall_s": end - start,
        "rate_total": count / (end - start),
        "rate_steady": count / steady,
        "mb_s": count * report_bytes / steady / 1e6,
        "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "start_rss_mb": start_rss / 1e6,
        "peak_rss_mb": peak_rss / 1e6,
        "report_bytes": report_bytes,
        "tiers": len(tier_topics(config)),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--count-1k", type=int, default=20000)
    p.add_argument("--count-100k", type=int, default=3000)
    p.add_argument("--count-1m", type=int, default=0, help="1 MB originals (0: none)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--kafka-dir", type=Path, default=None)
    p.add_argument("--consumer", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-inflight-bytes", type=int, default=0, help="0: the default")
    args = p.parse_args()
    if args.max_inflight_bytes:
        DELIVERY_EXTRA["max_inflight_bytes"] = args.max_inflight_bytes
    for item in args.consumer:
        key, _, value = item.partition("=")
        CONSUMER_EXTRA[key] = int(value) if value.isdigit() else value

    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        kafka = KafkaLocal(args.kafka_dir or Path(tmp) / "kafka", brokers=1, die_with_parent=True)
        bootstrap = kafka.up()
        try:
            with SmtpSink(log_path=Path(tmp) / "sink.log") as sink:
                print(f"kafka {bootstrap}, smtp-sink {sink.address}, {args.concurrency} sessions")
                results = [
                    run_size(bootstrap, sink, size, count, args.concurrency)
                    for size, count in (
                        (1024, args.count_1k),
                        (100 * 1024, args.count_100k),
                        (1024 * 1024, args.count_1m),
                    )
                    if count
                ]
        finally:
            kafka.down()
    print()
    print(
        f"{'original':>9} {'copies':>7} {'report B':>9} {'copies/s':>9} {'steady/s':>9} "
        f"{'MB/s':>6} {'CPU s':>6} {'RSS at start MB':>15} {'peak RSS MB':>11}"
    )
    for r in results:
        print(
            f"{r['size'] // 1024:>7}KB {r['count']:>7} {r['report_bytes']:>9} "
            f"{r['rate_total']:>9.0f} {r['rate_steady']:>9.0f} {r['mb_s']:>6.1f} "
            f"{r['cpu_s']:>6.1f} {r['start_rss_mb']:>15.0f} {r['peak_rss_mb']:>11.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
