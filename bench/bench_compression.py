"""Compression by measurement (not a test): what each Kafka compression codec costs and saves
per size class and kind of content, on the real broker.

    .venv/bin/python -m bench.bench_compression [--mb 40] [--codecs none,lz4,zstd]

For each codec, content and size: a producer with mailjournal's settings (``acks=all``,
idempotent, ``linger.ms`` 10) writes ``--mb`` megabytes of records to a topic of its own, then a
consumer reads them back. Reported per megabyte of records: the producer's CPU (librdkafka
compresses in the producing process's threads), the consumer's (it decompresses), the broker's
(it validates each batch, decompressing it), and stored/raw bytes (the log segments on disk).

Content: ``smtp-source`` (the lines ``make bench`` sends: highly compressible, unlike mail),
``mail`` (a text and an HTML part and a base64 attachment of random bytes, the attachment ~80 %
of the size: what enterprise mail mostly is), ``attachment`` (base64 of random bytes only).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds, proc_cpu
from devtools.kafka_local import KafkaLocal

SIZES = (1024, 100 * 1024, 1024 * 1024)
LINE = b"La de da de da 1.\r\n"
WORDS = (
    b"the quarterly figures attached please review before the board meeting on thursday "
    b"regards finance team confidential draft revenue forecast margin customer account "
).split()


def _text(rng: random.Random, size: int) -> bytes:
    out, n = [], 0
    while n < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(12)) + b"\r\n"
        out.append(line)
        n += len(line)
    return b"".join(out)[:size]


def _base64(size: int) -> bytes:
    raw = base64.encodebytes(os.urandom(size * 3 // 4 + 3)).replace(b"\n", b"\r\n")
    return raw[:size]


def content(kind: str, size: int, rng: random.Random) -> bytes:
    head = b"From: a@ext.example\r\nTo: b@corp.example\r\nSubject: figures\r\n\r\n"
    if kind == "smtp-source":
        return head + LINE * max(1, (size - len(head)) // len(LINE))
    if kind == "attachment":
        return head + _base64(size - len(head))
    text = _text(rng, max(200, size // 10))
    html = b"<html><body><p>" + _text(rng, max(200, size // 10)) + b"</p></body></html>\r\n"
    return head + text + html + _base64(max(0, size - len(head) - len(text) - len(html)))


def log_bytes(data_dir: Path, topic: str) -> int:
    return sum(
        f.stat().st_size
        for d in data_dir.rglob(f"{topic}-*")
        if d.is_dir()
        for f in d.iterdir()
        if f.suffix == ".log"
    )


def measure(
    bootstrap: str, broker_pid: int, data_dir: Path, codec: str, kind: str, size: int, mb: int
) -> tuple[float, float, float, float]:
    topic = f"bench-comp-{codec}-{kind}-{size}-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "10485760"})])[
        topic
    ].result(30)
    rng = random.Random(size)
    records = [content(kind, size, rng) for _ in range(16)]
    count = max(50, mb * 1024 * 1024 // size)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 10,
            "compression.type": codec,
            "message.max.bytes": 10485760,
        }
    )
    broker0, cpu0 = proc_cpu(broker_pid), cpu_seconds()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, records[i % len(records)])
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0
    produce_cpu = cpu_seconds() - cpu0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "enable.auto.commit": False,
            "fetch.max.bytes": 52428800,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    cpu1, got = cpu_seconds(), 0
    while got < count:
        for m in consumer.consume(500, 5.0):
            if m.error() is None:
                got += 1
    consume_cpu = cpu_seconds() - cpu1
    consumer.close()
    broker_cpu = proc_cpu(broker_pid) - broker0
    raw_mb = count * size / 1024 / 1024
    stored = log_bytes(data_dir, topic) / (count * size)
    return (
        produce_cpu / raw_mb * 1000,
        consume_cpu / raw_mb * 1000,
        broker_cpu / raw_mb * 1000,
        stored,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=40, help="megabytes of records per point")
    parser.add_argument("--codecs", default="none,lz4,zstd")
    parser.add_argument("--kinds", default="smtp-source,mail,attachment")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-compression-"))
    kafka = KafkaLocal(work / "kafka", brokers=1, die_with_parent=True)
    bootstrap = kafka.up()
    try:
        pid = next(p for p in kafka.broker_pids().values() if p)
        print(
            f"{'content':>12} {'size':>7} {'codec':>5} {'producer ms/MB':>15} "
            f"{'consumer ms/MB':>15} {'broker ms/MB':>13} {'stored/raw':>10}"
        )
        for kind in args.kinds.split(","):
            for size in SIZES:
                for codec in args.codecs.split(","):
                    p, c, b, ratio = measure(bootstrap, pid, work, codec, kind, size, args.mb)
                    print(
                        f"{kind:>12} {size // 1024:>5}KB {codec:>5} {p:>15.2f} {c:>15.2f}"
                        f" {b:>13.2f} {ratio:>10.2f}",
                        flush=True,
                    )
    finally:
        kafka.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
