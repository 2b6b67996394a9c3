"""Broker faults on a cluster of its own: three brokers (``KafkaLocal(dir, brokers=3)``), topics at
replication 3 and ``min.insync.replicas=2``, the whole pipeline under load.

- the broker leading the most partitions dies: nothing lost, ingest keeps answering 250 after a
  short pause; a second broker dies: ingest answers 4xx, never 250; both come back: the load
  completes;
- all brokers down for longer than the transaction timeout: ingest answers 4xx within its ack
  timeout and never 250; brokers back: the stages recover without being restarted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.kafka_local import KafkaLocal
from mailjournal.config import Config
from mailjournal.kafka import make_admin
from mailjournal.topics import ensure_topics
from tests.fixtures.faults import (
    Load,
    audit_clean,
    brief,
    fault_config,
    probe,
    sink_copies,
    stage_metric,
    summary,
)
from tests.fixtures.kafka import TOPIC_KEYS, kafka_test_config, unique_suffix
from tests.fixtures.pipeline import Pipeline
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]

ACK_TIMEOUT = 8.0  # ingest.kafka_ack_timeout_seconds in these scenarios
# longer than the journal worker's transaction.timeout.ms (60 s): the coordinator aborts the
# transaction the outage left open and bumps the producer epoch, which the worker must survive
FULL_OUTAGE_SECONDS = 70.0
PRODUCER_GIVES_UP_MS = 20_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaLocal]:
    local = KafkaLocal(Path(tmp_path_factory.mktemp("kafka3")), brokers=3, die_with_parent=True)
    try:
        local.up(timeout=300)
        yield local
    finally:
        local.down()


@pytest.fixture
def cluster_config(cluster: KafkaLocal, request: pytest.FixtureRequest) -> Config:
    replicated = {key: {"replication_factor": 3, "min_insync_replicas": 2} for key in TOPIC_KEYS}
    config = kafka_test_config(
        cluster.bootstrap,
        unique_suffix(request.node.name),
        overrides={"kafka": {"topics": replicated}},
    )
    report = ensure_topics(config)
    assert not report.has_drift, report.lines()
    return config


def busiest_leader(config: Config) -> int:
    """The broker leading the most partitions of this test's topics."""
    names = {t.name for t in config.kafka.topics.all().values()}
    meta = make_admin(config).list_topics(timeout=30)
    leaders = Counter(
        p.leader for name, t in meta.topics.items() if name in names for p in t.partitions.values()
    )
    return leaders.most_common(1)[0][0]


def start_pipeline(
    config: Config,
    capture: CaptureServer,
    factory: Callable[[Config], Pipeline],
    producer: dict[str, object] | None = None,
) -> Pipeline:
    """The fault pipeline on the cluster, ingest answering 4xx after ACK_TIMEOUT without acks;
    ``producer``: librdkafka settings of the stages' producers."""
    overrides: dict[str, object] = {"ingest": {"kafka_ack_timeout_seconds": ACK_TIMEOUT}}
    if producer:
        overrides["kafka"] = {"producer": producer}
    return factory(fault_config(config, capture, None, overrides)).start()


def stage_pids(p: Pipeline) -> dict[str, int | None]:
    return {s: p.stage_pid(s) for s in ("ingest", "journal", "delivery")}


def finish(p: Pipeline, load: Load, capture: CaptureServer, label: str, **extra: object) -> dict:
    wait_until(
        lambda: set(load.accepted.values()) <= {e for e, _ in sink_copies(capture)},
        240,
        "every accepted message journaled",
    )
    report = audit_clean(p, timeout=240)
    figures = summary(label, load, capture, report, **extra)
    print(brief(report))
    assert figures["lost"] == 0, figures["lost_ids"]
    assert figures["copies_delivered"] == figures["copies_owed"]
    return figures


def test_leader_loss_then_quorum_loss_then_recovery(
    cluster: KafkaLocal,
    cluster_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    total = 800
    p = start_pipeline(cluster_config, smtp_capture, pipeline_factory)
    load = Load(p.smtp_port, total, rate=40).start()
    probes = 0

    wait_until(lambda: load.count >= 150, 120, "150 accepted")
    first = busiest_leader(p.config)
    cluster.kill_broker(first)
    killed_at, count_at_kill = time.monotonic(), load.count
    # ingest keeps answering 250 after a short pause (leader election, producer retry)
    wait_until(lambda: load.count >= count_at_kill + 40, 60, "250s again after a leader died")
    pause = time.monotonic() - killed_at

    wait_until(lambda: load.count >= 400, 120, "400 accepted")
    second = next(b for b in cluster.brokers if b != first)
    cluster.kill_broker(second)
    # one of three replicas left, below min.insync.replicas: 4xx, never 250
    started = time.monotonic()
    probes += 1
    code = probe(p.smtp_port, timeout=ACK_TIMEOUT + 30)
    took = time.monotonic() - started
    assert 400 <= code < 500, code
    assert took < ACK_TIMEOUT + 10
    frozen, refused = load.count, sum(load.replies.values())
    # the load keeps trying, each try refused after the ack timeout: as many more refusals as
    # there are senders, and not one 250 among them
    wait_until(
        lambda: sum(load.replies.values()) >= refused + load.senders,
        4 * ACK_TIMEOUT + 30,
        "the load refused again",
        diagnose=p.problems,
    )
    assert load.count == frozen, "a 250 without min.insync.replicas"

    cluster.start_broker(first)
    cluster.start_broker(second)
    load.wait(300)
    assert load.count == total
    figures = finish(
        p,
        load,
        smtp_capture,
        "broker-loss",
        leader_pause_s=round(pause, 1),
        quorum_loss_reply=code,
        quorum_loss_reply_s=round(took, 1),
    )
    assert figures["messages_in_kafka"] <= total + load.unacknowledged + probes


def test_all_brokers_down_then_back_without_restarting_stages(
    cluster: KafkaLocal,
    cluster_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    total = 300
    # the stages' producers give up on a record after 20 s, well inside the outage: a record
    # delivery or the relay had in flight must be produced again, not end the process
    # (mailjournal/consumer/loop.py), however long Kafka is away
    producer = {"delivery.timeout.ms": PRODUCER_GIVES_UP_MS}
    p = start_pipeline(cluster_config, smtp_capture, pipeline_factory, producer)
    pids = stage_pids(p)
    load = Load(p.smtp_port, total, rate=30).start()
    wait_until(lambda: load.count >= 100, 120, "100 accepted")
    for node in cluster.brokers:
        cluster.kill_broker(node)
    settled = load.count  # replies for data acked just before the kill may still arrive
    started = time.monotonic()
    code = probe(p.smtp_port, timeout=ACK_TIMEOUT + 30)
    took = time.monotonic() - started
    assert 400 <= code < 500, code
    assert took < ACK_TIMEOUT + 10
    frozen = load.count
    assert frozen - settled <= load.senders
    # the load keeps trying all along: never a 250
    # not synchronisation: the outage itself, longer than the transaction timeout on purpose
    time.sleep(max(2 * ACK_TIMEOUT, FULL_OUTAGE_SECONDS - (time.monotonic() - started)))
    assert load.count == frozen, "a 250 while every broker was down"

    cluster.up(timeout=300)  # all at once: one broker alone has no controller quorum to join
    load.wait(300)
    assert load.count == total
    finish(
        p, load, smtp_capture, "all-brokers-down", outage_reply=code, outage_reply_s=round(took, 1)
    )
    assert stage_pids(p) == pids, f"a stage was restarted to recover:\n{p.problems()}"
    # how many results were in flight when Kafka went is timing: printed, not asserted
    again = stage_metric(p, "delivery", "mailjournal_delivery_produced_again_total")
    print(f"delivery produced {again} results again after the outage")
