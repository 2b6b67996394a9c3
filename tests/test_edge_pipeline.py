"""The README's swaks examples through ``mailjournal run`` with the example configuration, whose
recipient verification is on (issue 14): both still deliver their journal reports. The inbound
example comes from an untrusted address, so it really passes verification; a made-up recipient
from there is refused at RCPT."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mailjournal.config import Config, load_config, load_config_dict
from tests.fixtures.config import deep_merge
from tests.fixtures.pipeline import Pipeline, pipeline_config
from tests.fixtures.smtp import CaptureServer, wait_until

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "mailjournal.example.toml"
OUTSIDER = "127.0.0.2"  # loopback, but outside the trusted networks set below


def swaks(port: int, sender: str, rcpt: str, *, source: str = "127.0.0.1") -> str:
    argv = ["swaks", "--server", f"127.0.0.1:{port}", "--local-interface", source]
    done = subprocess.run(
        [*argv, "--from", sender, "--to", rcpt, "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout + done.stderr


def test_readme_examples_deliver_with_the_example_config(
    kafka_config: Config,
    smtp_capture: CaptureServer,
    pipeline_factory: Callable[[Config], Pipeline],
) -> None:
    example = load_config(EXAMPLE)
    assert example.ingest.verify_recipients  # the point of this test
    base = load_config_dict(
        deep_merge(
            example.model_dump(mode="json", exclude_none=True),
            {"kafka": kafka_config.model_dump(mode="json", exclude_none=True)["kafka"]},
        )
    )
    config = pipeline_config(
        base,
        smtp_capture.port,
        {"organization": {"trusted_networks": ["127.0.0.1/32", "::1/128"]}},
    )
    p = pipeline_factory(config).start()

    inbound = swaks(p.smtp_port, "partner@external.example", "alice@corp.example", source=OUTSIDER)
    assert "250 2.1.5" in inbound and "Ok: queued as" in inbound, inbound
    outbound = swaks(p.smtp_port, "bob@corp.example", "customer@external.example")
    assert "Ok: queued as" in outbound, outbound
    unknown = swaks(p.smtp_port, "partner@external.example", "nobody@corp.example", source=OUTSIDER)
    assert "550 5.1.1 <nobody@corp.example>: Recipient address rejected: User unknown" in unknown
    hidden = swaks(
        p.smtp_port, "partner@external.example", "journal-in@corp.example", source=OUTSIDER
    )
    assert "550 5.1.1 <journal-in@corp.example>: Recipient address rejected: User unknown" in hidden

    expected = {
        "journal-in@corp.example",
        "supervisor-journal@corp.example",
        "journal-out@corp.example",
        "trading-journal@corp.example",
    }

    def delivered() -> set[str]:
        return {r for m in smtp_capture.messages for r in m.rcpt_tos}

    wait_until(lambda: expected <= delivered(), 120, "journal reports of the README examples")
    assert delivered() == expected, p.log_tail()
