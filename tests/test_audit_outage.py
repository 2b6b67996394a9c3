"""The audit when Kafka cannot be reached: a one-shot run gives no verdict (exit 2, a reason, no
traceback); a serving run (``--interval`` with ``--metrics-port``) outlives the outage, counts
each failed run and tries again. Kafka's absence is real: nothing listens on the port."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from mailjournal.exits import EXIT_NO_VERDICT
from tests.fixtures.config import make_config, write_config_file
from tests.fixtures.smtp import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


def unreachable_config(tmp_path: Path) -> Path:
    config = make_config({"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}})
    return write_config_file(config, tmp_path / "audit.toml")


def audit(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mailjournal", "audit", "--config", str(config), *extra]


def test_one_shot_audit_without_kafka_gives_no_verdict(tmp_path: Path) -> None:
    result = subprocess.run(
        audit(unreachable_config(tmp_path)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == EXIT_NO_VERDICT, result.stderr[-2000:]
    assert "audit: cannot finish:" in result.stderr
    assert "Traceback" not in result.stderr


def failed_runs(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return -1.0
    for line in text.splitlines():
        if line.startswith("mailjournal_audit_failed_runs_total "):
            return float(line.split()[1])
    return -1.0


def test_serving_audit_outlives_a_kafka_outage(tmp_path: Path) -> None:
    port = free_port()
    args = audit(unreachable_config(tmp_path), "--metrics-port", str(port), "--interval", "0.5")
    stderr = tmp_path / "audit.err"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            # served from the start, at 0, before any run has finished
            wait_until(lambda: failed_runs(port) == 0, 60, "the failed-runs counter at 0")
            wait_until(
                lambda: failed_runs(port) >= 2 or proc.poll() is not None,
                240,
                "two failed runs counted",
                diagnose=lambda: stderr.read_text(errors="replace")[-2000:],
            )
            assert proc.poll() is None, stderr.read_text(errors="replace")[-2000:]
        finally:
            proc.terminate()
            proc.wait(30)
    text = stderr.read_text(errors="replace")
    assert text.count("audit: cannot finish:") >= 2
    assert "Traceback" not in text
