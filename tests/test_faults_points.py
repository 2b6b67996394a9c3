"""The fault-point mechanism itself (``mailjournal/faults.py``): parsing ``MAILJOURNAL_FAULT``,
hit counting, the once-per-log rule, and what an armed or misconfigured process does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailjournal.exits import EXIT_FAULT
from mailjournal.faults import (
    ENV,
    LOG_ENV,
    POINTS,
    FaultInjected,
    Faults,
    FaultSpec,
    FaultSpecError,
    from_environment,
    parse_spec,
)
from tests.fixtures.faults import fault_env, wait_fault
from tests.fixtures.smtp import wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_parse_one_point_defaults_to_the_first_hit() -> None:
    assert parse_spec("journal.txn.before_commit:kill") == [
        FaultSpec("journal.txn.before_commit", "kill", 1)
    ]


def test_parse_several_points_with_hit_counts() -> None:
    assert parse_spec(" ingest.after_ack:pause@3 , audit.mid_scan:raise@10,") == [
        FaultSpec("ingest.after_ack", "pause", 3),
        FaultSpec("audit.mid_scan", "raise", 10),
    ]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("journal.txn.before_commit", "not name:action"),
        ("journal.txn.before_commit:explode", "unknown action 'explode'"),
        ("journal.txn.bofore_commit:kill", "unknown fault point 'journal.txn.bofore_commit'"),
        ("ingest.after_ack:kill@0", "starts at 1"),
        ("ingest.after_ack:kill@x", "not name:action"),
        ("ingest.after_ack:kill,ingest.after_ack:pause", "armed twice"),
        (" , ", "arms no point"),
    ],
)
def test_bad_specifications_are_refused_with_the_reason(text: str, complaint: str) -> None:
    with pytest.raises(FaultSpecError, match=re.escape(complaint)):
        parse_spec(text)


def test_fires_on_the_nth_hit_only() -> None:
    faults = Faults(parse_spec("delivery.after_remote_250:raise@3"))
    assert [faults.due("delivery.after_remote_250") for _ in range(5)] == [
        None,
        None,
        FaultSpec("delivery.after_remote_250", "raise", 3),
        None,
        None,
    ]
    assert faults.due("ingest.after_ack") is None  # not armed: not counted
    assert faults.hits == {"delivery.after_remote_250": 5}


def test_raise_action_logs_the_fact_then_raises(tmp_path: Path) -> None:
    log = tmp_path / "faults.log"
    faults = Faults(parse_spec("audit.mid_scan:raise"), str(log))
    spec = faults.due("audit.mid_scan")
    assert spec is not None
    with pytest.raises(FaultInjected, match=re.escape("audit.mid_scan")):
        faults.fire(spec)
    assert log.read_text() == f"audit.mid_scan {os.getpid()}\n"


def test_unarmed_environment_and_points_already_fired(tmp_path: Path) -> None:
    assert from_environment({}) is None
    assert from_environment({ENV: "  "}) is None
    log = tmp_path / "faults.log"
    env = {ENV: "ingest.after_ack:kill,audit.mid_scan:pause", LOG_ENV: str(log)}
    armed = from_environment(env)
    assert armed is not None and set(armed.specs) == {"ingest.after_ack", "audit.mid_scan"}
    # a restarted process (same environment) does not fire a point that has fired already
    log.write_text("ingest.after_ack 4242\n")
    armed = from_environment(env)
    assert armed is not None and set(armed.specs) == {"audit.mid_scan"}
    log.write_text("ingest.after_ack 4242\naudit.mid_scan 4243\n")
    assert from_environment(env) is None


def test_every_point_is_called_in_the_stages() -> None:
    sources = "".join(
        p.read_text()
        for d in (
            "ingest",
            "journal_worker",
            "delivery",
            "relay",
            "evidence",
            "audit",
            "mailjournal",
        )
        for p in (ROOT / d).glob("*.py")
        if p.name != "faults.py"
    )
    for name in POINTS:
        assert sources.count(f'fault_point("{name}")') == 1, name


# -- a real process ----------------------------------------------------------------------------

PROBE = "from mailjournal.faults import fault_point; print('before', flush=True); {calls}"


def run_probe(env: dict[str, str], calls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE.format(calls=calls)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bad_specification_exits_2_at_start() -> None:
    result = run_probe({ENV: "journal.txn.before_commit:explode"}, "")
    assert result.returncode == 2
    assert "unknown action 'explode'" in result.stderr
    assert "before" not in result.stdout  # refused at import, before any work


def test_an_armed_process_warns_at_start_and_exit_action_uses_its_own_status(
    tmp_path: Path,
) -> None:
    env = fault_env("audit.mid_scan:exit@2", tmp_path / "faults.log")
    result = run_probe(
        env,
        "fault_point('audit.mid_scan'); print('one', flush=True); "
        "fault_point('audit.mid_scan'); print('two')",
    )
    assert result.returncode == EXIT_FAULT
    assert result.stdout.split() == ["before", "one"]
    assert "WARNING: FAULT POINTS ARMED (audit.mid_scan:exit@2)" in result.stderr
    assert "FAULT POINT audit.mid_scan:exit@2 fired" in result.stderr
    assert (tmp_path / "faults.log").read_text().split()[0] == "audit.mid_scan"


def test_kill_action_dies_by_sigkill() -> None:
    result = run_probe(
        {ENV: "ingest.after_ack:kill"}, "fault_point('ingest.after_ack'); print('x')"
    )
    assert result.returncode == -signal.SIGKILL
    assert "x" not in result.stdout.split()


def test_pause_action_stops_the_process_where_the_log_says(tmp_path: Path) -> None:
    env = fault_env("journal.txn.before_commit:pause", tmp_path / "faults.log")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PROBE.format(
                calls="fault_point('journal.txn.before_commit'); print('resumed', flush=True)"
            ),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        fired = wait_fault(tmp_path / "faults.log", "journal.txn.before_commit", 30)
        assert fired == proc.pid
        os.kill(proc.pid, signal.SIGCONT)  # resumes after the point, as if nothing happened
        out, _ = proc.communicate(timeout=30)
        assert out.split() == ["before", "resumed"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: proc.returncode == 0, 1, "the resumed probe to exit 0")
