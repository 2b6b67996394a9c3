"""SIGKILL of every stage, several times each, in one long flow (inbound, outbound and
per-recipient journaling from a real slapd, delivery to a capture SMTP server), on the session's
real Kafka. One kill per stage lands at a fault point (``mailjournal/faults.py``): ingest at
``ingest.after_ack``, the journal worker at ``journal.txn.before_commit``, delivery at
``delivery.after_remote_250`` -- the fault log proves each landed there. The others land at
random times, as an extra; no assertion depends on where a random kill landed. Proves: every
message that got ``250`` is journaled; each copy is in the journal topic exactly once
(``read_committed``); duplicate deliveries stay within the in-flight window of the kills;
``mailjournal audit`` finds zero gaps."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailjournal.config import Config
from tests.fixtures.faults import (
    Load,
    audit_clean,
    brief,
    fault_config,
    fault_env,
    fault_messages,
    fired,
    journal_copy_counts,
    seed_users,
    sink_copies,
    summary,
)
from tests.fixtures.ldap import Slapd
from tests.fixtures.pipeline import Pipeline
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

KILLS = {"ingest": 2, "journal": 2, "delivery": 2}  # random-timing kills, per stage
# one kill per stage at a fault point, on the N-th hit since the stage's last (re)start
POINT_KILLS = {
    "ingest": "ingest.after_ack:kill@150",
    "journal": "journal.txn.before_commit:kill@8",
    "delivery": "delivery.after_remote_250:kill@250",
}
RATE = float(os.environ.get("MAILJOURNAL_FAULT_RATE", 60))  # messages/s: ~35 s for 2,000


def test_sigkill_every_stage_several_times_under_load(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    slapd: Slapd,
    pipeline_factory: Callable[[Config], Pipeline],
    tmp_path: Path,
) -> None:
    """Fault points ``ingest.after_ack``, ``journal.txn.before_commit``,
    ``delivery.after_remote_250`` (one kill each), plus random-timing kills."""
    total = fault_messages()
    seed = int(os.environ.get("MAILJOURNAL_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    seed_users(slapd)
    config = fault_config(kafka_config, smtp_capture, slapd)
    log = tmp_path / "faults.log"
    p = pipeline_factory(config).start(env_extra=fault_env(",".join(POINT_KILLS.values()), log))

    # kill points: fractions of the flow, jittered; ingest and journal by messages accepted,
    # delivery by copies arrived at the sink (so it dies while it is delivering)
    plan: list[tuple[float, str]] = []
    for stage, n in KILLS.items():
        for k in range(n):
            plan.append(((k + 0.5) / n * 0.9 + rng.uniform(-0.1, 0.1), stage))
    plan.sort()
    started = time.monotonic()
    load = Load(p.smtp_port, total, rate=RATE).start()
    kills: list[tuple[str, int, int]] = []  # (stage, accepted at the kill, delivered at the kill)
    for frac, stage in plan:
        target = max(1, int(frac * total))

        def progress(stage: str = stage) -> int:
            return len(smtp_capture.messages) if stage == "delivery" else load.count

        wait_until(lambda t=target, f=progress: f() >= t, 300, f"{stage} kill point")
        kills.append((stage, load.count, len(smtp_capture.messages)))
        p.kill_stage(stage)
    load.wait(300)
    assert load.count == total
    # every fault-point kill landed where it names, once (the supervisor restarted the stage)
    points = sorted(spec.split(":")[0] for spec in POINT_KILLS.values())
    wait_until(lambda: sorted(n for n, _ in fired(log)) == points, 120, f"{points} fired")

    wait_until(
        lambda: set(load.accepted.values()) <= {e for e, _ in sink_copies(smtp_capture)},
        240,
        "every accepted message journaled",
    )
    report = audit_clean(p)
    elapsed = time.monotonic() - started
    journal = journal_copy_counts(config)
    figures = summary(
        "sigkill",
        load,
        smtp_capture,
        report,
        seed=seed,
        kills=len(kills) + len(POINT_KILLS),
        journal_records=sum(journal.values()),
        seconds=round(elapsed, 1),
    )
    print(f"kill points (stage, accepted, arrived): {kills}")
    print(brief(report))
    assert figures["lost"] == 0, figures["lost_ids"]
    # exactly once in the journal topic, across the journal-worker crashes
    assert [c for c, n in journal.items() if n > 1] == []
    assert figures["copies_delivered"] == figures["copies_owed"] == len(journal)
    # duplicates only from a crash between the remote 250 and the offset commit: at most the
    # in-flight window per delivery kill
    bound = (KILLS["delivery"] + 1) * config.delivery.max_inflight
    assert figures["duplicate_deliveries"] <= bound, figures
    assert figures["ndrs"] == 0
    # a message is in Kafka only if its client got 250, or lost the reply after sending it
    assert total <= figures["messages_in_kafka"] <= total + load.unacknowledged
    # every journal worker the supervisor started had the run's one transactional id: each
    # fenced its killed predecessor and settled the transaction it left open at once (a worker
    # killed before it logged is not counted)
    ids = re.findall(
        r"journal worker \S+ consuming \S+ \(transactional\.id (\S+)\)", p.log_tail(10**6)
    )
    assert len(ids) >= 2 and len(set(ids)) == 1, ids
