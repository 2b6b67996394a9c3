"""All of mailjournal's topics, defined in one place, and ``mailjournal topics ensure``.

``ensure_topics`` creates missing topics and reports drift on existing ones (partition count,
replication factor, topic configs) without changing them: repartitioning a keyed topic or
shortening a retention is an operator's decision, never a side effect of starting a stage.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from mailjournal.config import Config, add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_DRIFT, EXIT_KAFKA, EXIT_OK
from mailjournal.kafka import make_admin, topic_max_message_bytes


@dataclass(frozen=True)
class TopicSpec:
    key: str  # role in the pipeline: messages, journal, retry, outcomes, dead_letters
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass(frozen=True)
class Drift:
    topic: str
    item: str  # "partitions", "replication_factor" or a topic config name
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.item} is {self.actual}, config wants {self.expected}"


@dataclass
class EnsureReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)

    @property
    def has_drift(self) -> bool:
        return bool(self.drift)

    def lines(self) -> list[str]:
        return (
            [f"created   {t}" for t in self.created]
            + [f"unchanged {t}" for t in self.unchanged]
            + [f"drift     {d}" for d in self.drift]
        )


# Retry tiers: one topic per delay, ``<configured name>.<tier>``, so a topic holds records of one
# delay only. Every stage, the dlq, the audit and the config's checks name them through here.


def retry_topic_name(config: Config, tier: int) -> str:
    """Topic of retry tier ``tier`` (delay ``delivery.retry_delays_seconds[tier]``)."""
    return f"{config.kafka.topics.retry.name}.{tier}"


def relay_retry_topic_name(config: Config, tier: int) -> str:
    """Topic of the relay's retry tier ``tier`` (delay ``relay.retry_delays_seconds[tier]``)."""
    return f"{config.kafka.topics.relay_retry.name}.{tier}"


def retry_topic_names(config: Config) -> list[str]:
    """Delivery's retry tiers, shortest delay first."""
    return [retry_topic_name(config, i) for i in range(len(config.delivery.retry_delays_seconds))]


def relay_retry_topic_names(config: Config) -> list[str]:
    """The relay's retry tiers, shortest delay first (created only when a listener relays)."""
    return [
        relay_retry_topic_name(config, i) for i in range(len(config.relay.retry_delays_seconds))
    ]


EVIDENCE_TOPICS = ("receipts", "evidence", "receipts_state")


def topic_specs(config: Config) -> list[TopicSpec]:
    max_bytes = str(topic_max_message_bytes(config))
    specs = []
    topics = dict(config.kafka.topics.all())
    # delivery's retry tiers: one topic per delay, each shaped like the configured retry topic
    retry = topics.pop("retry")
    for i, name in enumerate(retry_topic_names(config)):
        topics[f"retry.{i}"] = retry.model_copy(update={"name": name})
    if not config.evidence.enabled:  # the receipt writer's topics, only when it runs
        for key in EVIDENCE_TOPICS:
            topics.pop(key)
    if config.relays:  # the relay's own retry tiers, only when some listener is inline
        relay = config.kafka.topics.relay_retry
        for i, name in enumerate(relay_retry_topic_names(config)):
            topics[f"relay_retry.{i}"] = relay.model_copy(update={"name": name})
    for key, t in topics.items():
        specs.append(
            TopicSpec(
                key=key,
                name=t.name,
                partitions=t.partitions,
                replication_factor=t.replication_factor,
                configs={
                    "min.insync.replicas": str(t.min_insync_replicas),
                    "max.message.bytes": max_bytes,
                    "retention.ms": str(t.retention_ms),
                    "cleanup.policy": "compact" if t.compact else "delete",
                    "compression.type": t.compression,
                },
            )
        )
    return specs


def _drift(
    spec: TopicSpec, admin: AdminClient, partitions: dict[int, list[int]], timeout: float
) -> list[Drift]:
    out = []
    if len(partitions) != spec.partitions:
        out.append(Drift(spec.name, "partitions", str(spec.partitions), str(len(partitions))))
    rfs = sorted({len(replicas) for replicas in partitions.values()})
    if rfs != [spec.replication_factor]:
        actual = "/".join(map(str, rfs))
        out.append(Drift(spec.name, "replication_factor", str(spec.replication_factor), actual))
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
    entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(
        timeout=timeout
    )
    for name, want in spec.configs.items():
        entry = entries.get(name)
        have = entry.value if entry is not None else None
        if have != want:
            out.append(Drift(spec.name, name, want, str(have)))
    return out


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Until every partition of the new topics has a leader in the metadata, so producing right
    after ``ensure`` does not race topic creation."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending and time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout)
        pending = [
            n
            for n in pending
            if n not in md.topics
            or md.topics[n].error is not None
            or not md.topics[n].partitions
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if pending:
            time.sleep(0.1)


def ensure_topics(
    config: Config, admin: AdminClient | None = None, *, timeout: float = 30.0
) -> EnsureReport:
    """Create missing topics; report (never fix) drift on existing ones. Idempotent."""
    admin = admin or make_admin(config)
    specs = topic_specs(config)
    existing = admin.list_topics(timeout=timeout).topics
    report = EnsureReport()
    to_create = [s for s in specs if s.name not in existing]
    if to_create:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.configs))
                for s in to_create
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for spec in to_create:
            try:
                futures[spec.name].result(timeout=timeout + 5)
                report.created.append(spec.name)
            except KafkaException as exc:
                # another process (a second pod starting) created it first: check it like any other
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        _wait_for_leaders(admin, report.created, timeout)
        existing = admin.list_topics(timeout=timeout).topics
    for spec in specs:
        if spec.name in report.created:
            continue
        partitions = {p.id: list(p.replicas) for p in existing[spec.name].partitions.values()}
        drift = _drift(spec, admin, partitions, timeout)
        if drift:
            report.drift.extend(drift)
        else:
            report.unchanged.append(spec.name)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    ensure = sub.add_parser(
        "ensure", help="create missing topics; report drift on existing ones (exit 3)"
    )
    add_config_argument(ensure)
    ensure.add_argument("--timeout", type=float, default=30.0, help="seconds per Kafka request")


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        report = ensure_topics(config, timeout=args.timeout)
    except KafkaException as exc:
        print(f"topics: Kafka at {config.kafka.bootstrap_servers} failed: {exc}", file=sys.stderr)
        return EXIT_KAFKA
    for line in report.lines():
        print(line)
    return EXIT_DRIFT if report.has_drift else EXIT_OK
