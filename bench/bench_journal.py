"""Benchmark: decided messages per second of ONE journal worker on a local real Kafka.

Starts a single-node Kafka (``devtools.kafka_local.KafkaLocal``, or uses ``--bootstrap``),
pre-fills a messages topic with MessageReceived events (inbound and outbound, 1-3 recipients,
``--body-size`` bytes each), then runs one worker per scenario from the beginning of the topic
in its own consumer group and measures from its first committed transaction to its last:

* ``global``: global inbound/outbound journaling only (no directory);
* ``file``: plus per-recipient journaling from a file directory;
* ``ldap``: plus per-recipient journaling from a real slapd, cache warmed beforehand.

Usage: ``.venv/bin/python bench/bench_journal.py [--messages 20000] [--body-size 1024]``
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import REGISTRY  # noqa: E402

from devtools.kafka_local import KafkaLocal  # noqa: E402
from journal_worker.lookups import make_directory  # noqa: E402
from journal_worker.worker import JournalWorker  # noqa: E402
from mailjournal.config import Config  # noqa: E402
from mailjournal.topics import ensure_topics  # noqa: E402
from tests.fixtures.journal import (  # noqa: E402
    INSIDE_IP,
    decided_count,
    make_event,
    produce_events,
    with_overrides,
)
from tests.fixtures.kafka import kafka_test_config, unique_suffix  # noqa: E402
from tests.fixtures.ldap import ATTRIBUTE, Slapd  # noqa: E402


def make_events(n: int, users: int, body_size: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    body = (b"x" * 76 + b"\r\n") * max(1, body_size // 78)
    out = []
    for _ in range(n):
        rcpts = [f"user{rng.randrange(users)}@corp.example" for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.6:
            out.append(make_event("sender@example.net", rcpts, body=body))
        else:
            out.append(make_event(rcpts[0], ["peer@example.net"], client_ip=INSIDE_IP, body=body))
    return out


def copies_emitted() -> float:
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "mailjournal_journal_copies_emitted"
        for s in m.samples
        if s.name.endswith("_total")
    )


def measure(config: Config, total: int, directory: Any = None) -> tuple[float, int, float]:
    """Run one worker until the group has decided ``total`` messages; returns (seconds, count,
    copies) from the first committed transaction (startup and group join excluded)."""
    worker = JournalWorker(config, instance_id="bench", directory=directory)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        start_count = 0
        while (start_count := decided_count(config)) == 0:
            time.sleep(0.01)
        started, copies = time.monotonic(), copies_emitted()
        while (done := decided_count(config)) < total:
            time.sleep(0.05)
        return time.monotonic() - started, done - start_count, copies_emitted() - copies
    finally:
        worker.stop()
        thread.join(60)


def scenario(base: Config, name: str, overrides: dict[str, Any]) -> Config:
    topics = {"journal": {"name": f"{base.kafka.topics.journal.name}.{name}"}}
    config = with_overrides(
        base,
        {
            **overrides,
            "kafka": {"journal_group": f"{base.kafka.journal_group}.{name}", "topics": topics},
        },
    )
    ensure_topics(config)
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--body-size", type=int, default=1024)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="journal.batch_max_messages")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--only", choices=["global", "file", "ldap"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["global", "file", "ldap"])

    work = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    kafka = None
    slapd = None
    try:
        bootstrap = args.bootstrap
        if not bootstrap:
            kafka = KafkaLocal(work / "kafka", brokers=1, die_with_parent=True)
            bootstrap = kafka.up()
        base = kafka_test_config(
            bootstrap,
            unique_suffix("bench"),
            partitions=args.partitions,
            overrides={"journal": {"batch_max_messages": args.batch, "batch_max_ms": 100}},
        )
        ensure_topics(base)
        events = make_events(args.messages, args.users, args.body_size)
        t = time.monotonic()
        produce_events(base, events)
        print(
            f"pre-filled {len(events)} events ({args.body_size} B bodies) "
            f"in {time.monotonic() - t:.1f}s; {args.partitions} partitions, batch {args.batch}"
        )
        per_rcpt = {
            "inbound": {"recipient_attribute": ATTRIBUTE},
            "outbound": {"recipient_attribute": ATTRIBUTE},
        }
        results: list[tuple[str, float, int, float]] = []

        if "global" in only:
            config = scenario(base, "global", {})
            results.append(("global only", *measure(config, len(events))))

        if "file" in only:
            path = work / "directory.toml"
            path.write_text(
                "".join(
                    f'["user{i}@corp.example"]\n{ATTRIBUTE} = "sup{i % 20}@corp.example"\n'
                    for i in range(args.users)
                )
            )
            config = scenario(
                base,
                "file",
                {
                    "journal": per_rcpt,
                    "directory": {"backend": "file", "file": {"path": str(path)}},
                },
            )
            results.append(("file directory", *measure(config, len(events))))

        if "ldap" in only:
            slapd = Slapd(work / "slapd")
            slapd.start()
            ldif = "".join(
                f"dn: {slapd.user_dn(f'user{i}')}\nobjectClass: inetOrgPerson\n"
                f"objectClass: mailjournalUser\nuid: user{i}\ncn: user{i}\nsn: user{i}\n"
                f"mail: user{i}@corp.example\n{ATTRIBUTE}: sup{i % 20}@corp.example\n\n"
                for i in range(args.users)
            )
            slapd.ldapadd(ldif)
            config = scenario(
                base, "ldap", {"journal": per_rcpt, "directory": slapd.directory_config()}
            )
            directory = make_directory(config.directory)
            assert directory is not None
            t = time.monotonic()
            directory.lookup_many([f"user{i}@corp.example" for i in range(args.users)], [ATTRIBUTE])
            print(f"ldap cache warmed: {args.users} lookups in {time.monotonic() - t:.2f}s")
            results.append(("ldap (slapd, cache warm)", *measure(config, len(events), directory)))

        print(
            f"\n{'scenario':<28} {'messages':>9} {'seconds':>8} {'decided msgs/s':>15} "
            f"{'copies/s':>9}"
        )
        for name, seconds, count, copies in results:
            print(
                f"{name:<28} {count:>9} {seconds:>8.2f} {count / seconds:>15.0f} "
                f"{copies / seconds:>9.0f}"
            )
    finally:
        if slapd is not None:
            slapd.stop()
        if kafka is not None:
            kafka.down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
