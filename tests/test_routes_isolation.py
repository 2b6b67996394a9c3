"""Two archives on two routes through ``mailjournal run`` on the real broker: route ``onprem``
(plain SMTP) and route ``cloud`` (STARTTLS required, verified against a test CA made with
trustme). Every inbound message owes one copy to each (``additional_addresses``: fan-out).

Route ``onprem``'s server turns slow (each DATA answered after seconds), then goes down, then
comes back, all under a steady load: route ``cloud``'s copies keep their normal latency (its
p99 stays within its normal range), ``onprem``'s are delivered once it is back, nothing is
NDR'd and the audit finds no gap.
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

from mailjournal.config import Config
from tests.fixtures.drain import wait_pipeline_drained
from tests.fixtures.ingest import TlsFiles
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
) -> Config:
    return pipeline_config(
        kafka_config,
        smart.port,
        {
            "journal": {
                "sender": "mailjournal@corp.example",
                "inbound": {"address": ONPREM, "additional_addresses": [CLOUD], "ndr_address": NDR},
            },
            "delivery": {
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


def test_one_archive_slow_then_down_never_delays_the_other(
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
    p = pipeline_factory(routes_config(kafka_config, onprem, cloud, smart, tls_files.ca))
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
