"""``mailjournal replay`` on the real broker, through ``mailjournal run``: a window of accepted
messages re-journaled to a third, empty archive (its own route, STARTTLS with a trustme CA).
The first invocation is SIGKILLed at ``replay.txn.after_produce``, the second at
``replay.txn.before_commit``; the same command a third time resumes and completes it. The archive gets exactly one copy per owed message, each marked as a
replay; the run report matches what the audit counts for the run; a window older than the
messages topic's retention is refused, naming the limit.
"""

from __future__ import annotations

import email
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from mailjournal.config import Config
from mailjournal.kafka import make_admin, make_consumer
from tests.fixtures.drain import wait_pipeline_drained
from tests.fixtures.faults import fault_env, fired
from tests.fixtures.ingest import TlsFiles
from tests.fixtures.pipeline import REPO, Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = pytest.mark.kafka

LIVE = "journal@corp.example"
NEW = "journal@new.archive.example"
NDR = "journal-ndr@corp.example"
INBOUND = 12
INTERNAL = 3  # internal -> internal: not journaled (off by default), skipped by the replay


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def replay(
    p: Pipeline, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailjournal", "replay", "--config", str(p.config_file), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=180,
    )


def header(data: bytes, name: str) -> str | None:
    value = email.message_from_bytes(data, policy=policy.compat32).get(name)
    return str(value) if value is not None else None


def test_replay_to_a_new_archive_survives_sigkill_and_matches_the_audit(
    kafka_config: Config,
    tls_files: TlsFiles,
    tmp_path: Path,
    smtp_capture_factory: Callable[..., CaptureServer],
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tls_files.cert, tls_files.key)
    live = smtp_capture_factory()
    new = smtp_capture_factory(tls_context=server_tls, require_starttls=True)
    config = pipeline_config(
        kafka_config,
        live.port,
        {
            # the test client on loopback is a trusted submitter: internal mail is internal
            "organization": {"trusted_networks": ["127.0.0.0/8"]},
            "journal": {
                "sender": "mailjournal@corp.example",
                "inbound": {"address": LIVE, "ndr_address": NDR},
                "batch_max_messages": 3,  # several transactions per replay
            },
            "delivery": {
                "routes": [
                    {
                        "name": "new",
                        "match": ["new.archive.example"],
                        "host": "127.0.0.1",
                        "port": new.port,
                        "ca_file": str(tls_files.ca),
                    }
                ]
            },
        },
    )
    p = pipeline_factory(config).start()
    since = time.time() - 1
    inbound = [
        p.send("partner@ext.example", ["carol@corp.example"], subject=f"in {i}")
        for i in range(INBOUND)
    ]
    for i in range(INTERNAL):
        p.send("carol@corp.example", ["alice@corp.example"], subject=f"internal {i}")
    until = time.time() + 1
    wait_until(lambda: len(live.messages_to(LIVE)) >= INBOUND, 60, "live copies")
    wait_pipeline_drained(p.config, diagnose=p.problems)
    assert new.messages == []

    window = ["--since", iso(since), "--until", iso(until), "--to", NEW]
    # killed with its first batch produced, nothing committed; then again with one batch
    # committed and the second's offsets sent, its commit not made
    for n, point in enumerate(
        ("replay.txn.after_produce:kill@1", "replay.txn.before_commit:kill@2")
    ):
        log = tmp_path / f"faults-{n}.log"
        killed = replay(p, *window, env=fault_env(point, log))
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert [name for name, _ in fired(log)] == [point.split(":")[0]]

    done = replay(p, *window)
    assert done.returncode == 0, done.stdout + done.stderr
    report = done.stdout
    print(report)
    run_id = report.split()[2].rstrip(":")
    assert f"messages read: {INBOUND + INTERNAL}" in report
    assert f"copies owed: {INBOUND}" in report
    sent = next(line for line in report.splitlines() if line.startswith("copies sent:"))
    before = int(sent.split("(")[1].split()[0])
    assert sent.startswith(f"copies sent: {INBOUND} (") and 0 < before < INBOUND, sent
    assert f"messages skipped: {INTERNAL}" in report
    assert f"  not_journaled: {INTERNAL}" in report

    wait_until(
        lambda: len(new.messages_to(NEW)) >= INBOUND, 60, "replay copies", diagnose=p.problems
    )
    wait_pipeline_drained(p.config, diagnose=p.problems)
    got = new.messages_to(NEW)
    events = sorted(str(header(m.data, "X-MailJournal-Event-Id")) for m in got)
    assert events == sorted(inbound)  # exactly one copy per owed message, none of the skipped
    assert {header(m.data, "X-MailJournal-Replay") for m in got} == {run_id}
    assert all(
        str(header(m.data, "X-MailJournal-Copy-Id")).endswith(f".replay-{run_id}") for m in got
    )
    assert all(m.tls for m in got)
    assert len(live.messages_to(LIVE)) == INBOUND  # the live archive got nothing more

    audit = p.audit("--grace", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "gaps: 0" in audit.stdout
    assert (
        f"replay run {run_id}: copies {INBOUND} for {INBOUND} messages; delivered={INBOUND}; "
        "emitted twice 0, delivered twice 0"
    ) in audit.stdout, audit.stdout

    again = replay(p, *window)  # complete: the same command produces nothing more
    assert again.returncode == 0, again.stderr
    assert f"copies sent: {INBOUND} ({INBOUND} by an earlier" in again.stdout

    dry = replay(p, *window, "--dry-run", "--run-id", "dry")
    assert dry.returncode == 0, dry.stderr
    assert f"copies owed: {INBOUND}" in dry.stdout and "copies sent: 0 (dry run)" in dry.stdout
    policy_run = replay(p, "--since", iso(since), "--until", iso(until), "--dry-run")
    assert f"copies owed: {INBOUND}" in policy_run.stdout, policy_run.stdout + policy_run.stderr

    # the oldest messages deleted, as retention would: the window now starts before the topic
    topic = config.kafka.topics.messages.name
    reader = make_consumer(config, "test-replay-watermarks", role="test")
    parts = reader.list_topics(topic, timeout=10).topics[topic].partitions
    cut = []
    for part in parts:
        _, high = reader.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
        if high > 1:
            cut.append(TopicPartition(topic, part, 1))
    reader.close()
    admin = make_admin(config)  # kept referenced until its futures are done
    for future in admin.delete_records(cut).values():
        future.result(timeout=30)
    refused = replay(p, *window, "--run-id", "too-old")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "kafka.topics.messages.retention_ms" in refused.stderr
    assert "before the earliest message still retained" in refused.stderr
