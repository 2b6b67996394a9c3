"""Two archives on two routes through ``mailjournal run`` on the real broker: route ``onprem``
(plain SMTP) and route ``cloud`` (STARTTLS required, verified against a test CA made with
trustme). Every inbound message owes one copy to each (``additional_addresses``: fan-out).

Route ``onprem``'s server turns slow (each DATA answered after seconds), then goes down, then
comes back, all under a steady load: route ``cloud``'s copies keep their normal latency (its
p99 stays within its normal range), ``onprem``'s are delivered once it is back, nothing is
NDR'd and the audit finds no gap.

Run twice: with the default window (``delivery.max_inflight``), and with a window far smaller than
what arrives while an onprem copy is stuck (5 messages/s x 2 copies x 15 s against 16): the
load of a busy site with a hung archive, scaled down. The window counts work in flight and work
finished since the last commit, not the span behind the stuck head (whose finished records the
commit's progress note carries), so cloud's latency holds in both.
"""

from __future__ import annotations

import email
import ssl
import statistics
import time
from collections.abc import Callable
from email import policy
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

import schemas
from mailjournal.config import Config
from mailjournal.consumer.partition import parse_note
from mailjournal.kafka import make_consumer
from tests.fixtures.drain import wait_pipeline_drained
from tests.fixtures.ingest import TlsFiles
from tests.fixtures.kafka import consume_all
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = pytest.mark.kafka

ONPREM = "journal-a@corp.example"
CLOUD = "journal@tenant.archive.example"
NDR = "journal-ndr@corp.example"
SLOW_SECONDS = 15.0  # onprem's answer to each DATA while it is slow
RATE = 5.0  # messages per second
PHASE_MESSAGES = 25


def routes_config(
    kafka_config: Config,
    onprem: CaptureServer,
    cloud: CaptureServer,
    smart: CaptureServer,
    ca: Path,
    max_inflight: int | None = None,
) -> Config:
    window = {} if max_inflight is None else {"max_inflight": max_inflight}
    return pipeline_config(
        kafka_config,
        smart.port,
        {
            "journal": {
                "sender": "mailjournal@corp.example",
                "inbound": {"address": ONPREM, "additional_addresses": [CLOUD], "ndr_address": NDR},
            },
            "delivery": {
                **window,
                "concurrency": 2,
                "connect_timeout_seconds": 3,
                "command_timeout_seconds": 30,
                "routes": [
                    {
                        "name": "onprem",
                        "match": [ONPREM],
                        "host": "127.0.0.1",
                        "port": onprem.port,
                        "concurrency": 2,
                        "max_waiting": 2,
                    },
                    {
                        "name": "cloud",
                        "match": ["*.archive.example"],
                        "host": "127.0.0.1",
                        "port": cloud.port,
                        "ca_file": str(ca),
                        "concurrency": 2,
                        "max_waiting": 4,
                    },
                ],
            },
        },
    )


def event_of(data: bytes) -> str | None:
    msg = email.message_from_bytes(data, policy=policy.compat32)
    value = msg.get("X-MailJournal-Event-Id")
    return str(value) if value else None


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


class Load:
    """Messages at a steady rate; the time each was accepted, by event id."""

    def __init__(self, pipeline: Pipeline):
        self.p = pipeline
        self.sent: dict[str, float] = {}

    def phase(self, n: int) -> list[str]:
        events = []
        start = time.monotonic()
        for i in range(n):
            # pacing of the load generator (a send schedule), not a synchronisation
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            event = self.p.send("partner@ext.example", ["carol@corp.example"], subject=f"m{i}")
            self.sent[event] = time.time()
            events.append(event)
        return events


def latencies(cloud: CaptureServer, load: Load, events: list[str]) -> list[float]:
    at = {event_of(m.data): m.at for m in cloud.messages_to(CLOUD)}
    return [at[e] - load.sent[e] for e in events]


@pytest.mark.parametrize("max_inflight", [None, 16], ids=["default-window", "small-window"])
def test_one_archive_slow_then_down_never_delays_the_other(
    max_inflight: int | None,
    kafka_config: Config,
    tls_files: TlsFiles,
    smtp_capture_factory: Callable[..., CaptureServer],
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tls_files.cert, tls_files.key)
    onprem = smtp_capture_factory()
    cloud = smtp_capture_factory(tls_context=server_tls, require_starttls=True)
    smart = smtp_capture_factory()  # the default route: only NDRs would come here
    p = pipeline_factory(
        routes_config(kafka_config, onprem, cloud, smart, tls_files.ca, max_inflight)
    )
    p.start()
    load = Load(p)

    def cloud_has(events: list[str]) -> Callable[[], bool]:
        return lambda: {event_of(m.data) for m in cloud.messages_to(CLOUD)} >= set(events)

    warm_up = load.phase(5)  # first sessions, first fetches: not the normal range
    wait_until(cloud_has(warm_up), 60, "cloud copies of the warm-up", diagnose=p.problems)
    normal = load.phase(PHASE_MESSAGES)
    wait_until(cloud_has(normal), 60, "cloud copies of the normal phase", diagnose=p.problems)
    normal_p99 = p99(latencies(cloud, load, normal))
    bound = max(3 * normal_p99, normal_p99 + 2.0)
    assert bound < SLOW_SECONDS, f"normal p99 {normal_p99:.2f}s too high to tell a delay"

    onprem.data_delay = SLOW_SECONDS  # slow: each copy holds an onprem session for seconds
    slow = load.phase(PHASE_MESSAGES)
    wait_until(cloud_has(slow), 60, "cloud copies of the slow phase", diagnose=p.problems)
    slow_p99 = p99(latencies(cloud, load, slow))

    onprem.stop()  # down: connections refused
    down = load.phase(PHASE_MESSAGES)
    wait_until(cloud_has(down), 60, "cloud copies of the outage", diagnose=p.problems)
    down_p99 = p99(latencies(cloud, load, down))

    for name, evs in (("normal", normal), ("slow", slow), ("down", down)):
        print(name, " ".join(f"{v:.2f}" for v in latencies(cloud, load, evs)))
    print(
        f"cloud p99: normal {normal_p99:.3f}s, onprem slow {slow_p99:.3f}s, "
        f"onprem down {down_p99:.3f}s (bound {bound:.3f}s)"
    )
    assert slow_p99 <= bound, (normal_p99, slow_p99)
    assert down_p99 <= bound, (normal_p99, down_p99)

    back = smtp_capture_factory(port=onprem.port)  # onprem returns
    events = warm_up + normal + slow + down
    got_onprem = lambda: {  # noqa: E731
        event_of(m.data) for s in (onprem, back) for m in s.messages_to(ONPREM)
    }
    wait_until(lambda: got_onprem() >= set(events), 90, "onprem copies after its return")
    wait_pipeline_drained(p.config, diagnose=p.problems)

    cloud_events = [event_of(m.data) for m in cloud.messages_to(CLOUD)]
    assert sorted(cloud_events) == sorted(events)  # one each, nothing lost or doubled
    assert all(m.tls for m in cloud.messages)  # the cloud route required STARTTLS
    assert smart.messages == []  # nothing NDR'd
    audit = p.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
    assert f"messages in window: {len(events)}" in audit.stdout


def cloud_copies_recorded(config: Config) -> bool:
    """Whether the delivery group's commits say every cloud copy in the journal topic is final:
    below the committed offset of its partition, or in that commit's progress note."""
    topic = config.kafka.topics.journal.name
    cloud: dict[int, list[int]] = {}
    for msg in consume_all(config, topic):
        value, partition, offset = msg.value(), msg.partition(), msg.offset()
        assert value is not None and partition is not None and offset is not None
        if schemas.decode(value, schemas.JOURNAL_COPY)["journal_address"] == CLOUD:
            cloud.setdefault(partition, []).append(offset)
    consumer = make_consumer(config, config.kafka.delivery_group, role="test-reader")
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in cloud], timeout=10)
    finally:
        consumer.close()
    for c in committed:
        note = parse_note(c.metadata, c.offset) if c.offset >= 0 else None
        for offset in cloud[c.partition]:
            if not (0 <= offset < c.offset or (note is not None and note.covers(offset))):
                return False
    return True


def test_a_restart_behind_a_stuck_head_skips_what_was_final(
    kafka_config: Config,
    tls_files: TlsFiles,
    smtp_capture_factory: Callable[..., CaptureServer],
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    """Onprem hangs, cloud's copies behind its stuck heads are delivered and recorded in the
    commit's progress note; delivery is SIGKILLed: its successor skips them (cloud gets each
    copy once, where without the note every one of them would be sent again), onprem's copies
    are all delivered once it answers again, and the audit finds no gap."""
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tls_files.cert, tls_files.key)
    onprem = smtp_capture_factory()
    cloud = smtp_capture_factory(tls_context=server_tls, require_starttls=True)
    smart = smtp_capture_factory()
    config = routes_config(kafka_config, onprem, cloud, smart, tls_files.ca, max_inflight=16)
    p = pipeline_factory(config).start()
    load = Load(p)

    onprem.data_delay = 120.0  # hung: every onprem session waits for its command timeout
    events = load.phase(PHASE_MESSAGES)
    wait_until(
        lambda: {event_of(m.data) for m in cloud.messages_to(CLOUD)} >= set(events),
        60,
        "cloud copies behind the stuck onprem heads",
        diagnose=p.problems,
    )
    # a commit after the last cloud copy has it below its offset or in its note
    wait_until(lambda: cloud_copies_recorded(p.config), 30, "cloud copies committed as final")
    delivered_before = len(cloud.messages_to(CLOUD))
    p.kill_stage("delivery")
    onprem.data_delay = 0.0  # onprem answers again
    wait_until(
        lambda: {event_of(m.data) for m in onprem.messages_to(ONPREM)} >= set(events),
        180,
        "onprem copies after the restart",
        diagnose=p.problems,
    )
    wait_pipeline_drained(p.config, diagnose=p.problems)
    cloud_events = [event_of(m.data) for m in cloud.messages_to(CLOUD)]
    assert delivered_before == len(events)
    assert sorted(cloud_events) == sorted(events), "cloud copies sent again after the restart"
    assert smart.messages == []  # nothing NDR'd
    audit = p.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
