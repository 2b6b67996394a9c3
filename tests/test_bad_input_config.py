"""Invalid configuration is refused at start (issue #7, bad input): every command that runs a
stage -- ``mailjournal run`` and ``ingest``, ``journal``, ``deliver``, ``relay`` -- exits 2
within seconds, before it starts Kafka, a child process or a listener, and says on stderr which
key is wrong (and, for an environment override, which variable set it).

The baseline file is valid for every one of these commands (a relay listener and its next hops
included) and points Kafka at a closed port: a command that let a bad value through would hang
on Kafka or exit 1, never exit 2 naming the key.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import tomli_w

from devtools.supervisor import Child, Supervisor
from mailjournal.config import load_config_dict
from tests.fixtures.config import STAMP_KEY, deep_merge, write_key
from tests.fixtures.smtp import free_port

ROOT = Path(__file__).resolve().parents[1]
STAGE_COMMANDS = ("run", "ingest", "journal", "deliver", "relay")


@dataclass
class Setup:
    """A baseline config (as data) with its own free ports, in a folder of its own."""

    folder: Path
    data: dict[str, Any]
    ports: list[int] = field(default_factory=list)


def baseline(folder: Path) -> Setup:
    ports = [free_port() for _ in range(6)]
    hop = {"host": "127.0.0.1", "port": ports[5]}
    key_file = write_key(folder / "stamp.key", STAMP_KEY)
    data = {
        "organization": {"accepted_domains": ["corp.example"], "trusted_networks": ["10.0.0.0/8"]},
        "journal": {
            "stamp_secret_file": str(key_file),
            "inbound": {
                "address": "journal-in@corp.example",
                "ndr_address": "journal-ndr@corp.example",
            },
            "outbound": {
                "address": "journal-out@corp.example",
                "ndr_address": "journal-ndr@corp.example",
            },
        },
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},  # nothing listens there
        "ingest": {"listeners": [{"name": "mx", "port": ports[0], "relay": True}]},
        "relay": {"inbound": hop, "outbound": hop},
        "metrics": dict(
            zip(
                ("ingest_port", "journal_port", "delivery_port", "relay_port"),
                ports[1:5],
                strict=True,
            )
        ),
    }
    load_config_dict(data)  # valid as it stands
    return Setup(folder, data, ports)


@dataclass(frozen=True)
class Case:
    """A bad value: ``change`` edits the baseline data (or writes the file itself and returns
    its text); ``names`` must all appear on stderr; ``commands``: those that must refuse it."""

    change: Callable[[Setup], dict[str, Any] | str]
    names: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    commands: tuple[str, ...] = STAGE_COMMANDS


def merged(over: dict[str, Any]) -> Callable[[Setup], dict[str, Any]]:
    return lambda s: deep_merge(s.data, over)


def without_ndr(s: Setup) -> dict[str, Any]:
    data = deep_merge(s.data, {})
    del data["journal"]["inbound"]["ndr_address"]
    return data


def without_key(s: Setup) -> dict[str, Any]:
    data = deep_merge(s.data, {})
    del data["journal"]["stamp_secret_file"]
    return data


def key_file(name: str, material: bytes) -> Callable[[Setup], dict[str, Any]]:
    def change(s: Setup) -> dict[str, Any]:
        path = write_key(s.folder / f"{name}.bin", material)
        return deep_merge(s.data, {"journal": {name: str(path)}})

    return change


def listener(**fields: Any) -> Callable[[Setup], dict[str, Any]]:
    def change(s: Setup) -> dict[str, Any]:
        data = deep_merge(s.data, {})
        data["ingest"]["listeners"][0].update(
            {k: str(s.folder / v) if k.endswith("_file") else v for k, v in fields.items()}
        )
        return data

    return change


def toml_error(s: Setup) -> str:
    text = tomli_w.dumps(s.data)
    return text + "\n[delivery]\ncommand_timeout_seconds = = 5\n"


CASES: dict[str, Case] = {
    "unknown key (typo)": Case(
        merged({"journal": {"inbound": {"adress": "j@corp.example"}}}),
        ("journal.inbound.adress: unknown key",),
    ),
    "journaling without ndr_address": Case(
        without_ndr, ("journal.inbound.ndr_address is required",)
    ),
    "malformed address": Case(
        merged({"journal": {"outbound": {"address": "journal-out@@corp.example"}}}),
        ("journal.outbound.address: not a valid mail address",),
    ),
    "malformed network": Case(
        merged({"organization": {"trusted_networks": ["10.0.0.0/33"]}}),
        ("organization.trusted_networks.0: not a valid IP network",),
    ),
    "negative timeout": Case(
        merged({"delivery": {"command_timeout_seconds": -5}}),
        ("delivery.command_timeout_seconds",),
    ),
    "zero timeout": Case(
        merged({"ingest": {"data_timeout_seconds": 0}}), ("ingest.data_timeout_seconds",)
    ),
    "infinite timeout": Case(
        merged({"delivery": {"connect_timeout_seconds": float("inf")}}),
        ("delivery.connect_timeout_seconds: Input should be a finite number",),
    ),
    "listener port out of range": Case(listener(port=70000), ("ingest.listeners.0.port",)),
    "PROXY listener without its peers": Case(
        listener(proxy_protocol=True), ("ingest.listeners.0", "proxy_protocol_peers")
    ),
    "soft error limit above the hard one": Case(
        merged({"ingest": {"soft_error_limit": 30}}), ("ingest.soft_error_limit",)
    ),
    "smart host port 0": Case(
        merged({"delivery": {"smart_host": {"port": 0}}}), ("delivery.smart_host.port",)
    ),
    "zero retry delay": Case(
        merged({"delivery": {"retry_delays_seconds": [0, 60]}}),
        ("delivery.retry_delays_seconds.0",),
    ),
    "negative relay retry delay": Case(
        merged({"relay": {"retry_delays_seconds": [-60]}}), ("relay.retry_delays_seconds.0",)
    ),
    "CR LF in the announced host name": Case(
        merged({"ingest": {"hostname": "mx.corp.example\r\n250 injected"}}),
        ("ingest.hostname: not a valid host name",),
    ),
    "two roles on one topic": Case(
        merged({"kafka": {"topics": {"journal": {"name": "mailjournal.messages"}}}}),
        ("kafka.topics.journal.name: topic 'mailjournal.messages' is also",),
    ),
    "relay in the journal worker's consumer group": Case(
        merged({"kafka": {"relay_group": "mailjournal-journal"}}),
        ("kafka.relay_group 'mailjournal-journal' is also kafka.journal_group",),
    ),
    "two listeners on one port": Case(
        lambda s: deep_merge(
            s.data,
            {
                "ingest": {
                    "listeners": [
                        {"name": "mx", "port": s.ports[0], "relay": True},
                        {"name": "submission", "port": s.ports[0]},
                    ]
                }
            },
        ),
        ("'submission' and 'mx' both listen on",),
    ),
    "bad value from the environment": Case(
        lambda s: s.data,
        ("ingest.max_recipients", "MAILJOURNAL_INGEST__MAX_RECIPIENTS"),
        env={"MAILJOURNAL_INGEST__MAX_RECIPIENTS": "lots"},
    ),
    "typo in an environment override": Case(
        lambda s: s.data,
        ("kafka.bootstrap_servres: unknown key", "MAILJOURNAL_KAFKA__BOOTSTRAP_SERVRES"),
        env={"MAILJOURNAL_KAFKA__BOOTSTRAP_SERVRES": "broker:9092"},
    ),
    "bad network from the environment": Case(
        lambda s: s.data,
        ("organization.trusted_networks.1", "MAILJOURNAL_ORGANIZATION__TRUSTED_NETWORKS"),
        env={"MAILJOURNAL_ORGANIZATION__TRUSTED_NETWORKS": '["10.0.0.0/8", "banana"]'},
    ),
    "TOML syntax error": Case(toml_error, ("not valid TOML", "line")),
    # files: refused by the commands whose stage reads them (a delivery pod in Kubernetes does
    # not mount the ingest listener's certificate, so deliver must not ask for it)
    "TLS listener whose certificate is missing": Case(
        listener(tls_cert_file="missing.crt", tls_key_file="missing.key"),
        ("ingest.listeners.0.tls_cert_file", "missing.crt: no such file"),
        commands=("run", "ingest"),
    ),
    # (was refused by run as well: `mailjournal run` now creates a missing key file)
    "stamp secret file missing": Case(
        merged({"journal": {"stamp_secret_file": "no-such-stamp.key"}}),
        ("journal.stamp_secret_file", "no-such-stamp.key: no such file"),
        commands=("journal", "deliver", "audit"),
    ),
    "journaling on without a stamp key": Case(
        without_key,
        ("journal.stamp_secret_file", "required when journaling is on"),
        commands=("run", "journal", "deliver", "audit"),
    ),
    "empty stamp key file": Case(
        key_file("stamp_secret_file", b""),
        ("journal.stamp_secret_file", "0 bytes of key material, at least 32 required"),
        commands=("run", "journal", "deliver", "audit"),
    ),
    "stamp key of 31 bytes": Case(
        key_file("stamp_secret_file", STAMP_KEY[:31]),
        ("journal.stamp_secret_file", "31 bytes of key material, at least 32 required"),
        commands=("run", "journal", "deliver", "audit"),
    ),
    "stamp key anyone can guess (64 newlines)": Case(
        key_file("stamp_secret_file", b"\n" * 64),
        ("journal.stamp_secret_file", "not random key material"),
        commands=("run", "journal", "deliver", "audit"),
    ),
    "previous stamp key too short": Case(
        key_file("stamp_previous_secret_file", b"old"),
        ("journal.stamp_previous_secret_file", "3 bytes of key material"),
        commands=("run", "journal", "deliver", "audit"),
    ),
    "no listener for run": Case(
        merged({"ingest": {"listeners": []}}), ("ingest.listeners",), commands=("run", "ingest")
    ),
}


def write(setup: Setup, case: Case) -> tuple[Path, int | None]:
    """The config file of ``case``; the line of the TOML error, if it writes one."""
    changed = case.change(setup)
    path = setup.folder / "mailjournal.toml"
    if isinstance(changed, str):
        path.write_text(changed, encoding="utf-8")
        return path, changed.splitlines().index("command_timeout_seconds = = 5") + 1
    path.write_text(tomli_w.dumps(changed), encoding="utf-8")
    return path, None


def run_command(
    command: str, path: Path, env: dict[str, str], kafka_dir: Path
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mailjournal", command, "--config", str(path)]
    if command == "run":
        argv += ["--local-kafka", str(kafka_dir)]  # must not be started for a bad config
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=60,
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_bad_value_is_refused_at_start_naming_the_key(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    setup = baseline(tmp_path)
    path, line = write(setup, case)
    kafka_dir = tmp_path / "kafka"
    # the configured broker's port listens, so a stage that reached for Kafka before refusing
    # its configuration leaves a connection in the backlog (what "refused at start" rules out)
    kafka = socket.create_server(
        ("127.0.0.1", int(setup.data["kafka"]["bootstrap_servers"].rsplit(":", 1)[1]))
    )
    with kafka, ThreadPoolExecutor(len(case.commands)) as pool:
        results = dict(
            zip(
                case.commands,
                pool.map(lambda c: run_command(c, path, case.env, kafka_dir), case.commands),
                strict=True,
            )
        )
        kafka.setblocking(False)
        contacted = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                kafka.accept()[0].close()
                contacted += 1
    assert contacted == 0, f"{contacted} connection(s) to Kafka before the refusal"
    for command, proc in results.items():
        what = f"mailjournal {command}: rc={proc.returncode} stderr:\n{proc.stderr}"
        assert proc.returncode == 2, what
        for text in case.names:
            assert text in proc.stderr, what
        if line is not None:
            assert f"line {line}" in proc.stderr, what
        assert "Traceback" not in proc.stderr, what
        assert "started" not in proc.stderr, what  # the supervisor logs each child it starts
    assert not kafka_dir.exists(), "run started a local Kafka for a bad config"
    # nothing left behind: no process on this config file, no port of it bound
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if str(path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    assert all(port_is_free(p) for p in setup.ports[:5])


def test_baseline_is_valid_for_every_command(tmp_path: Path) -> None:
    setup = baseline(tmp_path)
    path = tmp_path / "mailjournal.toml"
    path.write_text(tomli_w.dumps(setup.data), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mailjournal", "config", "check", "-q", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("no such file", lambda d: d / "absent.toml"),
        ("cannot read", lambda d: d),  # a directory
        (
            "not UTF-8",
            lambda d: (d / "latin1.toml").write_bytes(b"# caf\xe9\n") and d / "latin1.toml",
        ),
    ],
)
def test_unreadable_config_file_is_refused(
    what: str, make: Callable[[Path], Path], tmp_path: Path
) -> None:
    path = make(tmp_path)
    proc = run_command("deliver", path, {}, tmp_path / "kafka")
    assert proc.returncode == 2 and what in proc.stderr and "Traceback" not in proc.stderr, (
        proc.stderr
    )


def test_run_stops_when_a_stage_refuses_its_configuration(tmp_path: Path) -> None:
    """A stage that exits 2 refused the configuration and would refuse it again: the
    supervisor stops (exit 2) instead of restarting it for ever."""
    setup = baseline(tmp_path)
    cfg = load_config_dict(setup.data)
    args = argparse.Namespace(
        config=str(tmp_path / "mailjournal.toml"),
        local_kafka=None,
        embedded_kafka=False,
        capture=None,
        no_restart=False,
    )
    sup = Supervisor(args, cfg)
    sup.children = [
        Child("journal", [sys.executable, "-c", "raise SystemExit(2)"], dict(os.environ))
    ]
    try:
        assert sup.loop() == 2
    finally:
        sup.shutdown()
    assert sup.children[0].restarts.count == 0
