"""Signed journal receipts through the real pipeline (``mailjournal run``, real Kafka, a capture
SMTP server as the archive): messages in, receipts out, ``evidence verify`` exit 0; an exported
bundle verifies offline, and each tampering of it is detected and named; a SIGKILL of the
receipt writer mid-batch ends with every receipt exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evidence.keys import SigningKey
from mailjournal.config import Config
from mailjournal.kafka import make_admin
from mailjournal.policy import policy_digest
from schemas import decode
from tests.fixtures.faults import JOURNAL, fault_config, fault_env, fired
from tests.fixtures.kafka import consume_all
from tests.fixtures.pipeline import REPO, Pipeline
from tests.fixtures.smtp import CaptureServer, free_port, wait_until
from tests.test_faults_points_kill import message, submit

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(400)]

OUTBOUND = ("alice@corp.example", ["partner@ext.example"])
INTERNAL = ("alice@corp.example", ["bob@corp.example"])  # internal journaling off: no copy


def evidence_config(base: Config, capture: CaptureServer, workdir: Path) -> Config:
    suffix = base.kafka.journal_group.rsplit(".", 1)[-1]
    topics = base.kafka.topics
    return fault_config(
        base,
        capture,
        None,
        {
            "evidence": {
                "enabled": True,
                "signing_key_file": str(workdir / "evidence.key"),
                "checkpoint_interval_seconds": 0.5,
                "batch_max_ms": 50,
                "sync_interval_seconds": 0.2,
            },
            "kafka": {
                "evidence_group": f"mailjournal-evidence.{suffix}",
                "topics": {
                    "receipts": {"name": f"{topics.messages.name}.receipts", "partitions": 3},
                    "evidence": {"name": f"{topics.messages.name}.evidence"},
                    "receipts_state": {"name": f"{topics.messages.name}.receipts-state"},
                },
            },
            "metrics": {"evidence_port": free_port()},
        },
    )


@pytest.fixture
def evidence_pipeline(
    kafka_config: Config, smtp_capture: CaptureServer, tmp_path: Path
) -> Iterator[Callable[[dict[str, str] | None], Pipeline]]:
    started: list[Pipeline] = []
    config = evidence_config(kafka_config, smtp_capture, tmp_path)

    def start(env: dict[str, str] | None = None) -> Pipeline:
        workdir = tmp_path / "pipeline"
        workdir.mkdir()
        p = Pipeline(config, workdir)
        started.append(p)
        p.start(env_extra=env)
        wait_until(lambda: _ready(config), 90, "receipt writer ready", diagnose=p.problems)
        return p

    yield start
    for p in started:
        p.stop()
    t = config.kafka.topics
    futures = make_admin(config).delete_topics(
        [t.receipts.name, t.evidence.name, t.receipts_state.name], operation_timeout=10
    )
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=15)


def _ready(config: Config) -> bool:
    url = f"http://127.0.0.1:{config.metrics.evidence_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def submit_as(port: int, sender: str, rcpts: list[str], n: int) -> str:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail(sender)[0] == 250
        for r in rcpts:
            assert smtp.rcpt(r)[0] == 250
        code, reply = smtp.data(message(n))
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def receipts(config: Config, min_count: int = 0) -> list[dict[str, Any]]:
    return [
        decode(m.value() or b"", "JournalReceipt")
        for m in consume_all(config, config.kafka.topics.receipts.name, min_count=min_count)
    ]


def checkpoints(config: Config) -> list[dict[str, Any]]:
    out = []
    for m in consume_all(config, config.kafka.topics.evidence.name):
        record = decode(m.value() or b"")
        if "heads" in record:
            out.append(record)
    return out


def policy_changes(config: Config) -> list[dict[str, Any]]:
    out = []
    for m in consume_all(config, config.kafka.topics.evidence.name):
        record = decode(m.value() or b"")
        if "new_digest" in record:
            out.append(record)
    return out


def evidence(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailjournal", "evidence", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=180,
        check=False,
    )


def covered(config: Config, n: int) -> bool:
    """A checkpoint after the ``n`` receipts: its heads name them all."""
    return any(sum(h["seq"] + 1 for h in cp["heads"]) == n for cp in checkpoints(config))


# -- bundle tampering -----------------------------------------------------------------------


def load(bundle: Path) -> list[dict[str, Any]]:
    text = (bundle / "receipts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def save(bundle: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    (bundle / "receipts.jsonl").write_text(text, encoding="utf-8")


def longest_chain(rows: list[dict[str, Any]]) -> list[int]:
    """Row indexes of the partition with the most receipts (at least 3 are needed)."""
    counts = Counter(r["partition"] for r in rows)
    partition = counts.most_common(1)[0][0]
    idx = [i for i, r in enumerate(rows) if r["partition"] == partition]
    assert len(idx) >= 3, counts
    return idx


def change_field(rows: list[dict[str, Any]]) -> str:
    # a receipt with a copy (the internal message's has none, and its partition is chance's)
    i = next(i for i in longest_chain(rows)[1:] if rows[i]["copies"])
    rows[i]["copies"][0]["status"] = "NDR_SENT"  # "it never reached the archive"
    return rows[i]["event_id"]


def delete_receipt(rows: list[dict[str, Any]]) -> str:
    i = longest_chain(rows)[1]
    return str(rows.pop(i)["seq"])


def swap_receipts(rows: list[dict[str, Any]]) -> str:
    a, b = longest_chain(rows)[:2]
    rows[a], rows[b] = rows[b], rows[a]
    return rows[a]["event_id"]


def other_key(rows: list[dict[str, Any]]) -> str:
    i = longest_chain(rows)[1]
    rows[i] = SigningKey.generate().sign({**rows[i], "mail_from": "someone@else.example"})
    return rows[i]["event_id"]


def drop_newest(rows: list[dict[str, Any]]) -> str:
    idx = longest_chain(rows)
    seq = rows[idx[-1]]["seq"]
    for i in reversed(idx[-2:]):
        rows.pop(i)
    return f"up to seq {seq}"


TAMPERING: dict[str, tuple[Callable[[list[dict[str, Any]]], str], str]] = {
    "changed-field": (change_field, "bad-signature"),
    "deleted-receipt": (delete_receipt, "missing"),
    "swapped-receipts": (swap_receipts, "out-of-order"),
    "other-key": (other_key, "unknown key"),
    "newest-dropped": (drop_newest, "dropped"),
}


def test_receipts_through_the_pipeline_verify_and_every_tampering_is_named(
    evidence_pipeline: Callable[..., Pipeline], smtp_capture: CaptureServer, tmp_path: Path
) -> None:
    p = evidence_pipeline()
    config = p.config
    ids = [submit(p.smtp_port, message(n))[1] for n in range(8)]  # inbound: one copy each
    ids += [submit_as(p.smtp_port, *OUTBOUND, 100 + n) for n in range(4)]  # outbound
    ids += [submit_as(p.smtp_port, *INTERNAL, 200)]  # owes no copy: a receipt all the same
    wait_until(
        lambda: len(receipts(config)) >= len(ids), 180, "a receipt per message", diagnose=p.problems
    )
    wait_until(lambda: covered(config, len(ids)), 60, "a checkpoint over every receipt")
    got = {r["event_id"]: r for r in receipts(config)}
    assert sorted(got) == sorted(ids) and len(receipts(config)) == len(ids)
    digest = policy_digest(config)
    for event_id in ids[:12]:
        (copy,) = got[event_id]["copies"]
        assert copy["status"] == "DELIVERED" and copy["journal_address"] == JOURNAL
        assert copy["last_reply"] and copy["last_reply"].startswith("250"), copy
        assert copy["policy_digest"] == digest
        assert got[event_id]["policy_digest"] == digest
    assert got[ids[0]]["directions"] == ["INBOUND"] and got[ids[8]]["directions"] == ["OUTBOUND"]
    assert got[ids[12]]["copies"] == [] and got[ids[12]]["recipients"] == ["bob@corp.example"]
    assert got[ids[8]]["client"]["trusted"] is True and got[ids[0]]["mail_from"]

    (change,) = policy_changes(config)  # the first start records the policy in force
    assert change["old_digest"] is None and change["new_digest"] == digest
    assert json.loads(change["policy"])["inbound"]["address"] == JOURNAL

    verified = evidence(p, "verify", "--config", str(p.config_file))
    print(verified.stdout)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"receipts {len(ids)} in 3 chains" in verified.stdout
    assert f"accepted messages in the window: {len(ids)}" in verified.stdout

    bundle = tmp_path / "bundle"
    exported = evidence(p, "export", "--config", str(p.config_file), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    assert {f.name for f in bundle.iterdir()} >= {
        "receipts.jsonl",
        "checkpoints.jsonl",
        "keys.json",
        "README.md",
        "policy.jsonl",
    }
    clean = evidence(p, "verify", "--bundle", str(bundle))
    print(clean.stdout)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    for name, (tamper, kind) in TAMPERING.items():
        copy_dir = tmp_path / name
        shutil.copytree(bundle, copy_dir)
        rows = load(copy_dir)
        named = tamper(rows)
        save(copy_dir, rows)
        result = evidence(p, "verify", "--bundle", str(copy_dir))
        print(f"--- {name}\n{result.stdout}")
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert kind in result.stdout, (name, result.stdout)
        assert named in result.stdout, (name, named, result.stdout)


@pytest.mark.parametrize("point", ["evidence.txn.mid_batch", "evidence.txn.before_commit"])
def test_receipt_writer_killed_mid_batch_writes_every_receipt_exactly_once(
    evidence_pipeline: Callable[..., Pipeline], tmp_path: Path, point: str
) -> None:
    log = tmp_path / "faults.log"
    p = evidence_pipeline(fault_env(f"{point}:kill", log))
    config = p.config
    ids = [submit(p.smtp_port, message(n))[1] for n in range(10)]
    wait_until(lambda: [n for n, _ in fired(log)] == [point], 120, f"{point} fired")
    wait_until(lambda: _ready(config), 90, "receipt writer restarted", diagnose=p.problems)
    ids += [submit(p.smtp_port, message(n))[1] for n in range(10, 15)]
    wait_until(
        lambda: len(receipts(config)) >= len(ids), 180, "a receipt per message", diagnose=p.problems
    )
    wait_until(lambda: covered(config, len(ids)), 60, "a checkpoint over every receipt")
    counts = Counter(r["event_id"] for r in receipts(config))
    assert counts == Counter(ids), counts
    verified = evidence(p, "verify", "--config", str(p.config_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
