"""The Kafka floor: what the pipeline's Kafka work alone costs per message, with no mail in it.

Every role is a process that does only its stage's Kafka part, with the stages' own client
settings (``ingest.publisher.ingest_producer_config``, ``mailjournal.kafka``) and topics:

* ``ingest``: produces one record of SIZE octets per message to the messages topic
  (idempotent, acks=all, linger 1 ms) and waits for every acknowledgement;
* ``journal``: consumes it read_committed in batches (``journal.batch_max_messages``, the
  prefetch bound) and, in one transaction per batch with the batch's offsets, produces the copy;
* ``delivery``: consumes the copies, produces a small outcome per copy (idempotent) and commits
  its offsets every 0.5 s, as the tiered consumer does;
* ``relay`` (``relay=True``): consumes the messages, an outcome each, commits.

Two forms of the copy, both measured in the same broker:

* ``carry``: the copy carries the message's octets (today's ``JournalCopy``);
* ``reference``: the copy is a small record naming the message (topic, partition, offset, id,
  digest), and delivery reads the message itself from the messages topic. The sequential best
  case: delivery's consumer takes both topics, so each original is fetched once, in order.

What the stages add (SMTP, parsing, decisions, reports) comes on top of this, so the broker plus
these clients is the least CPU per message any stage code on this design can reach. Run alone
(``python -m bench.bench_floor``) or inside ``make bench`` (``bench.run_all --floor``), where it
shares the run's broker and its Postfix point gives the ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, proc_cpu

MODES = ("carry", "reference")
COPY_FIELDS = 400  # a JournalCopy's octets besides the original (ids, envelope, direction)
REFERENCE = 300  # a reference copy: the copy's fields less the envelope, plus the position
OUTCOME = 300  # a DeliveryOutcome


@dataclass(frozen=True)
class RoleResult:
    role: str
    cpu_s: float
    peak_rss_mb: float
    handled: int


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(bootstrap: str, suffix: str) -> Any:
    from tests.fixtures.kafka import kafka_test_config

    # production's partition count; every group of the point its own (kafka_test_config
    # suffixes the journal and delivery groups only)
    groups = {"relay_group": f"mailjournal-relay.{suffix}"}
    return kafka_test_config(bootstrap, suffix, partitions=6, overrides={"kafka": groups})


def _wait_assigned(consumer: Any, topics: list[str], timeout: float = 60.0) -> None:
    """Subscribe and poll until the group has given this consumer its partitions."""
    assigned: list[Any] = []
    consumer.subscribe(topics, on_assign=lambda c, ps: assigned.extend(ps))
    deadline = time.monotonic() + timeout
    while not assigned:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no partitions of {topics} assigned in {timeout:.0f} s")
        for m in consumer.consume(num_messages=1, timeout=0.2):
            raise RuntimeError(f"a record before the start: {m.topic()} {m.offset()}")


def _ingest(
    config: Any, size: int, count: int, rate: float | None, ready: Any, go: Any
) -> RoleResult:
    from confluent_kafka import Producer

    from ingest.publisher import ingest_producer_config

    producer = Producer(ingest_producer_config(config))
    topic = config.kafka.topics.messages.name
    value = b"x" * size
    acked = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal acked
        if err is not None:
            raise RuntimeError(f"produce failed: {err}")
        acked += 1

    producer.list_topics(topic, timeout=30)
    ready.set()
    go.wait()
    cpu0, t0 = cpu_seconds(), time.monotonic()
    for i in range(count):
        if rate:  # paced: batching, and so Kafka's cost per message, depends on the rate
            # a sleep, not poll(ahead): poll returns at the first acknowledgement it serves
            # (the pace overran), and takes its timeout in whole ms, so the sub-ms waits of a
            # fast pace spun at 0 (0.4 ms of ingest CPU per 1 KB message, the pacer's, not
            # Kafka's); the poll(0) after each produce serves the acknowledgements
            ahead = t0 + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        key = f"{i:026d}".encode()
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(300) != 0 or acked != count:
        raise RuntimeError(f"ingest: {acked} of {count} acknowledged")
    return RoleResult("ingest", cpu_seconds() - cpu0, _peak_rss_mb(), acked)


def _journal(config: Any, mode: str, count: int, ready: Any, go: Any) -> RoleResult:
    from confluent_kafka import Consumer, Producer

    from mailjournal.consumer.fetch import fetch
    from mailjournal.kafka import consumer_config, producer_config

    cconf = consumer_config(
        config, config.kafka.journal_group, prefetch_bytes=config.journal.prefetch_max_bytes
    )
    pconf = producer_config(config, transactional_id=f"floor-{os.getpid()}", role="journal")
    consumer, producer = Consumer(cconf), Producer(pconf)
    producer.init_transactions(30)
    journal = config.kafka.topics.journal.name
    _wait_assigned(consumer, [config.kafka.topics.messages.name])
    ready.set()
    go.wait()
    cpu0, done = cpu_seconds(), 0
    while done < count:
        batch = [
            m for m in fetch(consumer, config.journal.batch_max_messages, 0.1) if not m.error()
        ]
        if not batch:
            continue
        producer.begin_transaction()
        for m in batch:
            value = m.value() or b""
            copy = value + b"c" * COPY_FIELDS if mode == "carry" else b"r" * REFERENCE
            while True:
                try:
                    producer.produce(journal, copy, m.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
        )
        producer.commit_transaction()
        done += len(batch)
    return RoleResult("journal", cpu_seconds() - cpu0, _peak_rss_mb(), done)


def _consume_and_report(
    config: Any, role: str, group: str, topics: list[str], count: int, ready: Any, go: Any
) -> RoleResult:
    """Delivery's and the relay's Kafka part: a small outcome per record of ``topics[0]``,
    offsets committed every 0.5 s (``topics[1:]`` are read too: reference copies' originals)."""
    from confluent_kafka import Consumer, Producer

    from mailjournal.consumer.fetch import fetch
    from mailjournal.consumer.loop import COMMIT_INTERVAL_SECONDS
    from mailjournal.kafka import consumer_config, producer_config

    cconf = consumer_config(config, group)
    pconf = producer_config(config, role=role)
    consumer, producer = Consumer(cconf), Producer(pconf)
    outcomes = config.kafka.topics.outcomes.name
    _wait_assigned(consumer, topics)
    ready.set()
    go.wait()
    cpu0, done, read, last_commit = cpu_seconds(), 0, 0, time.monotonic()
    want, uncommitted = count * len(topics), False
    while read < want:
        for m in fetch(consumer, 500, 0.1):
            if m.error():
                continue
            read += 1
            uncommitted = True
            if m.topic() != topics[0]:
                continue  # a reference copy's original: fetched, as delivery would
            done += 1
            while True:
                try:
                    producer.produce(outcomes, b"o" * OUTCOME, m.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        if uncommitted and time.monotonic() - last_commit >= COMMIT_INTERVAL_SECONDS:
            consumer.commit(asynchronous=False)
            last_commit, uncommitted = time.monotonic(), False
    if producer.flush(120) != 0:
        raise RuntimeError(f"{role}: outcomes not acknowledged")
    if uncommitted:
        consumer.commit(asynchronous=False)
    return RoleResult(role, cpu_seconds() - cpu0, _peak_rss_mb(), done)


def _role(
    role: str,
    bootstrap: str,
    suffix: str,
    size: int,
    count: int,
    mode: str,
    rate: float | None,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    try:
        config = _config(bootstrap, suffix)
        topics = config.kafka.topics
        if role == "ingest":
            result = _ingest(config, size, count, rate, ready, go)
        elif role == "journal":
            result = _journal(config, mode, count, ready, go)
        elif role == "delivery":
            reads = [topics.journal.name] + ([topics.messages.name] if mode == "reference" else [])
            result = _consume_and_report(
                config, role, config.kafka.delivery_group, reads, count, ready, go
            )
        else:
            result = _consume_and_report(
                config, role, config.kafka.relay_group, [topics.messages.name], count, ready, go
            )
        results.put(asdict(result))
    except BaseException as exc:
        results.put({"role": role, "error": repr(exc)})
        ready.set()  # never leave the parent waiting on a role that died


def floor_point(
    bootstrap: str,
    broker_pid: int,
    size: int,
    count: int,
    mode: str,
    *,
    relay: bool = False,
    rate: float | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """One point: ``count`` messages of ``size`` through the roles, produced at ``rate`` per
    second (as fast as they go when None); CPU ms per message of each role and of the broker,
    measured from the first produce until the last role is done."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    from mailjournal.topics import ensure_topics
    from tests.fixtures.kafka import delete_topics, unique_suffix

    suffix = unique_suffix(f"floor-{mode}-{size}")
    config = _config(bootstrap, suffix)
    ensure_topics(config)
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    roles = ["journal", "delivery", *(["relay"] if relay else []), "ingest"]
    procs, readies = [], []
    for role in roles:
        ready = ctx.Event()
        p = ctx.Process(
            target=_role,
            args=(role, bootstrap, suffix, size, count, mode, rate, ready, go, results),
            daemon=True,
        )
        p.start()
        procs.append(p)
        readies.append(ready)
    try:
        for role, ready in zip(roles, readies, strict=True):
            if not ready.wait(120):
                raise TimeoutError(f"floor role {role} not ready in 120 s")
        b0 = proc_cpu(broker_pid)
        t0 = time.perf_counter()
        go.set()
        got = [results.get(timeout=timeout) for _ in roles]
        elapsed = time.perf_counter() - t0
        b1 = proc_cpu(broker_pid)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        delete_topics(config)
    errors = [f"{r['role']}: {r['error']}" for r in got if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))
    short = [r for r in got if r["handled"] != count]
    if short:
        raise RuntimeError(f"roles that handled other than {count}: {short}")
    kafka_s = b1 - b0
    cpu = {r["role"]: round(r["cpu_s"] / count * 1000, 3) for r in got}
    cpu["kafka"] = round(kafka_s / count * 1000, 3)
    achieved = round(count / elapsed, 1)
    return {
        "target": f"kafka-floor-{mode}" + ("+relay" if relay else ""),
        "family": "floor",
        "mode": mode,
        "paced": rate,
        "size": size,
        "sent": count,
        "accepted": count,
        "accepted_rate": achieved,
        "e2e_rate": achieved,
        "complete": True,
        "latency": {"p50_s": None, "p95_s": None, "p99_s": None},
        "groups": {r["role"]: {"peak_rss_mb": round(r["peak_rss_mb"], 1)} for r in got},
        "cpu_ms_per_msg": cpu,
        "cpu_ms_per_msg_total": round(sum(cpu.values()), 3),
    }


def floor_count(size: int, megabytes: int, least: int = 2000, most: int = 20000) -> int:
    """Messages per point: ``megabytes`` worth, within [least, most] (pure)."""
    return max(least, min(most, megabytes * 1024 * 1024 // max(1, size)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,102400,1048576")
    parser.add_argument("--mb", type=int, default=1000, help="megabytes of messages per point")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--relay", action="store_true", help="a relay role too")
    parser.add_argument(
        "--rates",
        default="",
        help="SIZE:MSGS_PER_S,... to pace the messages of a size (unpaced otherwise)",
    )
    args = parser.parse_args(argv)
    rates = {int(k): float(v) for k, v in (i.split(":") for i in args.rates.split(",") if i)}
    from devtools.kafka_local import KafkaLocal

    kafka = KafkaLocal(Path(tempfile.mkdtemp(prefix="bench-floor-")), brokers=1)
    bootstrap = kafka.up()
    try:
        pid = kafka.brokers[min(kafka.brokers)].pid
        assert pid is not None
        # a fresh broker's JIT warm-up is not a per-message cost (inside make bench the broker
        # has run every target by then): one unmeasured point first
        for mode in MODES:
            floor_point(bootstrap, pid, 1024 * 1024, 300, mode, relay=args.relay)
        for size in (int(s) for s in args.sizes.split(",")):
            for mode in args.modes.split(","):
                row = floor_point(
                    bootstrap,
                    pid,
                    size,
                    floor_count(size, args.mb),
                    mode,
                    relay=args.relay,
                    rate=rates.get(size),
                )
                roles = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_msg"].items())
                print(
                    f"{row['target']:>24} {size // 1024:>5} KB {row['accepted_rate']:>8.1f}/s"
                    f"  CPU ms/msg {row['cpu_ms_per_msg_total']:.2f} ({roles})",
                    flush=True,
                )
    finally:
        kafka.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
