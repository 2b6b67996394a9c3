"""Topic definitions and ``ensure_topics`` / ``mailjournal topics ensure`` against the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from mailjournal import cli
from mailjournal.config import Config
from mailjournal.kafka import make_admin, topic_max_message_bytes
from mailjournal.topics import Drift, ensure_topics, topic_specs
from tests.fixtures.config import make_config
from tests.fixtures.kafka import kafka_test_config, unique_suffix


def _describe(config: Config, topic: str) -> tuple[int, set[int], dict[str, str]]:
    """(partitions, replication factors, configs) as the broker has them."""
    admin = make_admin(config)
    t = admin.list_topics(topic, timeout=10).topics[topic]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    rfs = {len(p.replicas) for p in t.partitions.values()}
    return len(t.partitions), rfs, {k: e.value for k, e in entries.items()}


def test_topic_specs_cover_all_topics() -> None:
    journal_topic = {
        "name": "mailjournal.journal",
        "partitions": 12,
        "replication_factor": 3,
        "min_insync_replicas": 2,
        "compression": "zstd",
    }
    config = make_config({"kafka": {"topics": {"journal": journal_topic}}})
    specs = {s.key: s for s in topic_specs(config)}
    tiers = {f"retry.{i}" for i in range(len(config.delivery.retry_delays_seconds))}
    assert set(specs) == {"messages", "journal", "outcomes", "dead_letters"} | tiers
    assert specs["retry.0"].name == "mailjournal.journal.retry.0"
    journal = specs["journal"]
    assert (journal.name, journal.partitions, journal.replication_factor) == (
        "mailjournal.journal",
        12,
        3,
    )
    assert journal.configs["min.insync.replicas"] == "2"
    assert journal.configs["cleanup.policy"] == "delete"
    assert specs["outcomes"].configs["cleanup.policy"] == "compact"
    assert specs["dead_letters"].configs["retention.ms"] == "-1"
    assert {s.configs["max.message.bytes"] for s in specs.values()} == {
        str(topic_max_message_bytes(config))
    }
    # stored uncompressed unless the operator says otherwise, so consumers' fetch and prefetch
    # bounds count real bytes
    assert journal.configs["compression.type"] == "zstd"
    others = [s for key, s in specs.items() if key != "journal"]
    assert {s.configs["compression.type"] for s in others} == {"uncompressed"}


@pytest.mark.kafka
def test_ensure_creates_then_is_idempotent(kafka_bootstrap: str) -> None:
    config = kafka_test_config(kafka_bootstrap, unique_suffix("ensure"))
    names = [s.name for s in topic_specs(config)]

    first = ensure_topics(config)
    assert sorted(first.created) == sorted(names)
    assert first.unchanged == [] and first.drift == []
    partitions, rfs, configs = _describe(config, config.kafka.topics.outcomes.name)
    assert (partitions, rfs) == (3, {1})
    assert configs["cleanup.policy"] == "compact"
    assert configs["retention.ms"] == str(30 * 24 * 3600 * 1000)
    assert configs["max.message.bytes"] == str(topic_max_message_bytes(config))
    assert configs["compression.type"] == "uncompressed"

    second = ensure_topics(config)
    assert second.created == [] and second.drift == []
    assert sorted(second.unchanged) == sorted(names)
    assert not second.has_drift


@pytest.mark.kafka
def test_drift_is_reported_not_applied(kafka_config: Config) -> None:
    messages = kafka_config.kafka.topics.messages.name
    outcomes = kafka_config.kafka.topics.outcomes.name
    changed = kafka_test_config(
        kafka_config.kafka.bootstrap_servers,
        overrides={
            "kafka": {
                "topics": {
                    "messages": {"name": messages, "partitions": 6},
                    "outcomes": {"name": outcomes, "retention_ms": 1000},
                },
            }
        },
    )
    report = ensure_topics(changed)
    assert report.has_drift
    assert Drift(messages, "partitions", "6", "3") in report.drift
    assert Drift(outcomes, "retention.ms", "1000", str(30 * 24 * 3600 * 1000)) in report.drift
    assert len(report.drift) == 2
    assert messages not in report.unchanged and outcomes not in report.unchanged
    # the other topics of `changed` are new names (fresh suffix): created, not drift
    assert len(report.created) == len(topic_specs(changed)) - 2
    # nothing was changed on the broker
    assert _describe(kafka_config, messages)[0] == 3
    assert _describe(kafka_config, outcomes)[2]["retention.ms"] == str(30 * 24 * 3600 * 1000)


def _write_config(path: Path, config: Config, messages_partitions: int | None = None) -> Path:
    topics = config.kafka.topics.all()
    lines = [
        "[organization]",
        'accepted_domains = ["corp.example"]',
        "[kafka]",
        f'bootstrap_servers = "{config.kafka.bootstrap_servers}"',
    ]
    for key, t in topics.items():
        partitions = t.partitions
        if key == "messages" and messages_partitions is not None:
            partitions = messages_partitions
        lines += [
            f"[kafka.topics.{key}]",
            f'name = "{t.name}"',
            f"partitions = {partitions}",
            f"retention_ms = {t.retention_ms}",
            f"compact = {str(t.compact).lower()}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.kafka
def test_cli_exit_codes(
    kafka_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = _write_config(tmp_path / "same.toml", kafka_config)
    assert cli.main(["topics", "ensure", "--config", str(same)]) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged ") == len(topic_specs(kafka_config)) and "drift" not in out

    drifted = _write_config(tmp_path / "drift.toml", kafka_config, messages_partitions=9)
    assert cli.main(["topics", "ensure", "--config", str(drifted)]) == 3
    out = capsys.readouterr().out
    assert f"drift     {kafka_config.kafka.topics.messages.name}: partitions is 3" in out

    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap_servers = 1\n")
    assert cli.main(["topics", "ensure", "--config", str(bad)]) == 2
    assert "organization" in capsys.readouterr().err
