"""`make run` as a newcomer uses it: start, send the README's example, find the journal reports
in the Maildir, Ctrl-C, and nothing is left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.fixtures.smtp import wait_until

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.kafka


def _ours(run_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(run_dir) in cmdline or "config/mailjournal.example.toml" in cmdline:
            found.append(proc)
    return found


def test_make_run_journals_the_readme_example_and_stops_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"RUN_DIR={run_dir}"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group, as a terminal's Ctrl-C reaches it
        )
    try:
        wait_until(lambda: b"mailjournal is running." in log.read_bytes(), 240, "make run ready")
        banner = log.read_text()
        assert "send mail to   127.0.0.1:2525" in banner
        # the loop-guard key, created under the run directory: 32 random bytes, owner-only
        key = run_dir / "stamp.key"
        assert len(key.read_bytes()) == 32 and (key.stat().st_mode & 0o777) == 0o600
        maildir = run_dir / "maildir"
        attempts: list[subprocess.CompletedProcess[str]] = []

        def send_test() -> bool:  # ingest may still be joining Kafka right after the banner
            attempts.append(
                subprocess.run(
                    [sys.executable, "-m", "mailjournal", "send-test"],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
            )
            return attempts[-1].returncode == 0

        wait_until(
            send_test,
            120,
            "send-test to succeed",
            interval=1.0,
            diagnose=lambda: attempts[-1].stdout + attempts[-1].stderr + log.read_text()[-3000:],
        )
        sent = attempts[-1]
        assert sent.stdout.count("250 2.0.0 Ok: queued as") == 2

        def reports() -> dict[str, list[Path]]:
            return {
                box.name: list((box / "new").iterdir())
                for box in maildir.glob("*@*")
                if (box / "new").is_dir()
            }

        # inbound to Alice: global inbound journal + her supervisor's per-recipient archive;
        # outbound from Bob: global outbound journal + his trading archive
        expected = {
            "journal-in@corp.example",
            "supervisor-journal@corp.example",
            "journal-out@corp.example",
            "trading-journal@corp.example",
        }
        wait_until(lambda: set(reports()) >= expected, 60, f"reports in {maildir}")
        report = reports()["journal-in@corp.example"][0].read_bytes()
        assert b"X-MS-Journal-Report:" in report
        assert b"Return-Path: <journal-ndr@corp.example>" in report
        assert b"inbound test: from a partner to Alice" in report

        # a first run reads clean: no warning (librdkafka's self-retried start-up chatter is
        # INFO), and no raw librdkafka line (``%4|...``) beside the stages' own format
        # one line per stage when it is ready (devtools/ready.py), none announced twice
        def ready() -> list[str]:
            text = log.read_text(errors="replace")
            return re.findall(r"^(\w+) ready (?:again )?\(pid \d+\)$", text, re.M)

        wait_until(lambda: len(ready()) >= 3, 60, "a ready line per stage")
        assert sorted(ready()) == ["deliver", "ingest", "journal"], log.read_text()[-3000:]
        lines = log.read_text(errors="replace").splitlines()
        assert [line for line in lines if re.match(r"%\d\|", line)] == []
        assert [line for line in lines if re.search(r" (WARNING|ERROR|CRITICAL) ", line)] == []
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
        try:
            make.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
    left = _ours(run_dir)
    assert left == [], [p.info["cmdline"] for p in left]
    brokers = _pids(run_dir)
    assert brokers and not any(psutil.pid_exists(pid) for pid in brokers)


def _pids(run_dir: Path) -> list[int]:
    import json

    state = json.loads((run_dir / "kafka-local" / "state.json").read_text())
    return [b["pid"] for b in state.get("brokers", []) if isinstance(b, dict) and b.get("pid")]
