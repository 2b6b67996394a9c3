"""The container image as operators run it: ``make image`` builds it (buildah, FROM a local Debian
base), and every stage runs from it (``buildah run --isolation chroot --network host``) against the
session's Kafka, delivering to the capture server: mail sent to ingest comes out as journal copies,
and ``mailjournal audit`` run in the image finds no gap. The stages run as the image's non-root
user and write nothing into the image's file system (a read-only root file system suffices)."""

from __future__ import annotations

import contextlib
import email
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mailjournal.config import Config
from tests.fixtures.config import STAMP_KEY_FILE
from tests.fixtures.delivery import write_toml
from tests.fixtures.pipeline import STAGE_COMMANDS, Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/mailjournal:dev"  # make image's default: the test and `make image` share it
BUILDAH = ["buildah", "--storage-driver", "vfs"]
UID = 10001  # the Dockerfile's USER (deploy/kubernetes runAsUser)
CONF = "/etc/mailjournal"  # where the manifests mount the configuration


def buildah(*args: str, timeout: float = 120) -> str:
    res = subprocess.run(
        [*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert res.returncode == 0, f"buildah {' '.join(args)}: {res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def image() -> str:
    """``make image``: the wheels built here, the image built (or kept, when nothing changed)."""
    started = time.monotonic()
    res = subprocess.run(
        ["make", "--no-print-directory", "image", f"IMAGE={IMAGE}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert res.returncode == 0, f"make image failed:\n{res.stdout}\n{res.stderr}"
    print(f"make image: {time.monotonic() - started:.0f}s: {res.stdout.strip().splitlines()[-1]}")
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """A working container of the image (its own copy of the file system, made once: with vfs
    storage that is a full copy), removed afterwards."""
    name = f"mailjournal-test-{uuid.uuid4().hex[:8]}"
    buildah("from", "--pull=never", "--name", name, image)
    yield name
    buildah("rm", name)


def run_in(container: str, *argv: str, volumes: dict[Path, str] | None = None) -> list[str]:
    """The argv that runs ``argv`` in the container on the host's network, ``volumes`` mounted
    read-only (host path -> container path)."""
    mounts = [a for host, inside in (volumes or {}).items() for a in ("-v", f"{host}:{inside}:ro")]
    return [
        *BUILDAH,
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        *mounts,
        container,
        "--",
        *argv,
    ]


def test_image_is_one_non_root_image_for_every_stage(container: str) -> None:
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))["Docker"]["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/opt/mailjournal/bin/mailjournal"]
    res = subprocess.run(
        run_in(container, "sh", "-c", "id -u; mailjournal --help; touch /opt/x"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    uid, *help_lines = res.stdout.splitlines()
    assert uid == str(UID)
    help_text = "\n".join(help_lines)
    for command in ("ingest", "journal", "deliver", "relay", "audit"):
        assert command in help_text
    assert "Permission denied" in res.stderr  # the image's files are not its user's to change
    assert res.returncode != 0


class ImagePipeline(Pipeline):
    """The pipeline's stages each a ``buildah run`` of one container of the image; the
    configuration (and the stamp key, readable by the image's user) mounted at /etc/mailjournal."""

    def __init__(self, config: Config, workdir: Path, container: str):
        super().__init__(config, workdir)
        self.container = container
        self.conf_dir = workdir / "conf"
        self.conf_dir.mkdir()
        key = self.conf_dir / "stamp.key"
        shutil.copyfile(STAMP_KEY_FILE, key)
        key.chmod(0o600)
        os.chown(key, UID, UID)
        inside = config.model_copy(
            update={
                "journal": config.journal.model_copy(
                    update={"stamp_secret_file": Path(f"{CONF}/stamp.key")}
                )
            }
        )
        write_toml(inside, self.conf_dir / "mailjournal.toml")
        self.runs: list[subprocess.Popen[bytes]] = []

    def argv(self, *args: str) -> list[str]:
        return run_in(
            self.container,
            "mailjournal",
            *args,
            "--config",
            f"{CONF}/mailjournal.toml",
            volumes={self.conf_dir: CONF},
        )

    def start(
        self,
        stages: tuple[str, ...] = ("ingest", "journal", "delivery"),
        env_extra: dict[str, str] | None = None,
    ) -> ImagePipeline:
        assert not env_extra, "the image's stages take no test environment"
        with open(self.log_file, "ab") as log:
            for stage in stages:
                argv = self.argv(STAGE_COMMANDS[stage])
                self.runs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        for stage in stages:
            self.wait_ready(stage)
        return self

    def stop(self) -> None:
        """SIGTERM to each stage process itself (``buildah run`` kills, not forwards, on a
        signal of its own), then wait for its ``buildah run`` to end."""
        for run in self.runs:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(run.pid).children(recursive=True):
                    if child.uids().real == UID and "mailjournal" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGTERM)
        for run in self.runs:
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()

    def audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv("audit", *args), capture_output=True, text=True, timeout=120, check=False
        )


def written_files(root: Path, since: float) -> list[str]:
    """Files under a container's root changed after ``since``, but for /tmp and mount points."""
    skip = {"tmp", "proc", "sys", "dev", "run", "etc/mailjournal"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel, d)) not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_mtime > since:
                    out.append(os.path.relpath(path, root))
    return out


def test_pipeline_runs_from_the_image_and_the_audit_in_it_finds_no_gap(
    container: str, kafka_config: Config, smtp_capture: CaptureServer, tmp_path: Path
) -> None:
    overrides: dict[str, Any] = {"organization": {"trusted_networks": ["127.0.0.0/8"]}}
    p = ImagePipeline(
        pipeline_config(kafka_config, smtp_capture.port, overrides), tmp_path, container
    )
    root = Path(buildah("mount", container).strip())
    assert (root / "opt/mailjournal/bin/mailjournal").is_file()  # the container's own files
    before = time.time()
    try:
        p.start()
        sent = {
            p.send("partner@ext.example", ["alice@corp.example"]): "journal-in@corp.example",
            p.send("bob@corp.example", ["customer@ext.example"]): "journal-out@corp.example",
        }
        copies = smtp_capture.wait_for(len(sent), timeout=60)
        got = {
            email.message_from_bytes(m.data)["X-MailJournal-Event-Id"]: m.rcpt_tos for m in copies
        }
        assert got == {event: [journal] for event, journal in sent.items()}
        audit = p.audit("--grace", "1")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "gaps: 0" in audit.stdout
        assert f"messages in window: {len(sent)}" in audit.stdout
    finally:
        p.stop()
    assert written_files(root, before) == []  # read-only root file system friendly
    buildah("umount", container)
