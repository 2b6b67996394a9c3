"""Configuration: every refusal names the key; overrides from the environment; the example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailjournal.config import ConfigError, load_config, load_config_dict, masked_dump
from tests.fixtures.config import BASE, deep_merge, make_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "mailjournal.example.toml"


def errors_of(overrides: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        make_config(overrides)
    return info.value.errors


def test_baseline_is_valid() -> None:
    cfg = make_config()
    assert cfg.journal.inbound.active and cfg.journal.outbound.active
    assert not cfg.journal.internal.active


@pytest.mark.parametrize("direction", ["inbound", "outbound", "internal"])
def test_journaling_without_ndr_address_is_refused(direction: str) -> None:
    data = deep_merge(BASE, {})
    data["journal"][direction] = {"address": f"j-{direction}@corp.example"}
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert any(f"journal.{direction}.ndr_address is required" in e for e in info.value.errors)


def test_per_recipient_only_still_needs_ndr_address() -> None:
    data = deep_merge(BASE, {"directory": {"backend": "file", "file": {"path": "d.toml"}}})
    data["journal"]["inbound"] = {"recipient_attribute": "extensionAttribute10"}
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert any("journal.inbound.ndr_address is required" in e for e in info.value.errors)


def test_disabled_direction_needs_no_ndr_address() -> None:
    data = deep_merge(BASE, {})
    data["journal"]["outbound"] = {"enabled": False, "address": "j@corp.example"}
    assert not load_config_dict(data).journal.outbound.active


def test_per_recipient_needs_a_directory() -> None:
    errs = errors_of({"journal": {"inbound": {"recipient_attribute": "extensionAttribute10"}}})
    assert any("directory.backend" in e for e in errs)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"journal": {"inbound": {"address": "not-an-address"}}}, "journal.inbound.address"),
        ({"journal": {"outbound": {"ndr_address": "a@@b"}}}, "journal.outbound.ndr_address"),
        ({"journal": {"sender": "x y@corp.example"}}, "journal.sender"),
        (
            {"organization": {"trusted_networks": ["10.0.0.0/33"]}},
            "organization.trusted_networks.0",
        ),
        ({"organization": {"trusted_networks": ["banana"]}}, "organization.trusted_networks.0"),
        ({"organization": {"accepted_domains": ["bad domain"]}}, "organization.accepted_domains.0"),
    ],
)
def test_malformed_values_are_refused_with_their_key(overrides: dict, key: str) -> None:
    errs = errors_of(overrides)
    assert any(e.startswith(key + ":") for e in errs), errs


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"journal": {"inbound": {"adress": "j@corp.example"}}}, "journal.inbound.adress"),
        ({"kafka": {"bootstrap_server": "x:9092"}}, "kafka.bootstrap_server"),
        ({"organisation": {}}, "organisation"),
        ({"delivery": {"smart_host": {"prot": 25}}}, "delivery.smart_host.prot"),
    ],
)
def test_unknown_keys_are_refused(overrides: dict, key: str) -> None:
    errs = errors_of(overrides)
    assert f"{key}: unknown key (not a mailjournal setting; check the spelling)" in errs


def test_the_removed_registry_key_is_refused_saying_so() -> None:
    # the registry wire format was removed: a config that still sets it must not start, and the
    # error says why rather than suggesting a typo
    errs = errors_of({"kafka": {"schema_registry_url": "http://registry:8081"}})
    assert errs == [
        "kafka.schema_registry_url: removed: the Confluent Schema Registry wire format is no "
        "longer supported; every stage, the dlq and the audit use Avro single-object encoding "
        "(delete the key)"
    ]


def test_missing_accepted_domains() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_dict({"organization": {}})
    assert "organization.accepted_domains: required key is missing" in info.value.errors


def test_min_isr_above_replication_is_refused() -> None:
    errs = errors_of(
        {
            "kafka": {
                "topics": {
                    "messages": {"name": "m", "replication_factor": 1, "min_insync_replicas": 2}
                }
            }
        }
    )
    assert any("min_insync_replicas (2) exceeds replication_factor (1)" in e for e in errs)


def test_listener_auth_requires_tls() -> None:
    errs = errors_of({"ingest": {"listeners": [{"name": "sub", "port": 587, "auth": True}]}})
    assert any("AUTH is only offered after STARTTLS" in e for e in errs)


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text().replace('"directory.example.toml"', '"d.toml"'))
    cfg = load_config(
        path,
        environ={
            "MAILJOURNAL_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "MAILJOURNAL_INGEST__MAX_RECIPIENTS": "42",
            "MAILJOURNAL_JOURNAL__INTERNAL__ENABLED": "false",
            "MAILJOURNAL_ORGANIZATION__ACCEPTED_DOMAINS": '["a.example", "B.example"]',
            "MAILJOURNAL_CONFIG": "ignored: not a setting path",
        },
    )
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.ingest.max_recipients == 42
    assert cfg.organization.accepted_domains == ["a.example", "b.example"]
    # relative paths resolve against the config file's folder
    assert cfg.directory.file is not None and cfg.directory.file.path == tmp_path / "d.toml"


def test_environment_override_with_a_typo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text())
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"MAILJOURNAL_KAFKA__BOOTSTRAP_SERVRES": "x:1"})
    assert any(e.startswith("kafka.bootstrap_servres: unknown key") for e in info.value.errors)


def test_secrets_are_masked() -> None:
    cfg = make_config({"kafka": {"properties": {"sasl.password": "hunter2", "sasl.username": "u"}}})
    dumped = masked_dump(cfg)
    assert dumped["kafka"]["properties"] == {"sasl.password": "***", "sasl.username": "u"}
    assert "hunter2" not in repr(dumped)


def test_organization_helpers() -> None:
    cfg = make_config(
        {"organization": {"accepted_domains": ["corp.example"], "include_subdomains": True}}
    )
    org = cfg.organization
    assert org.is_internal_address("Alice@CORP.example")
    assert org.is_internal_address("bob@eu.corp.example")
    assert not org.is_internal_address("eve@corp.example.evil")
    assert not org.is_internal_address("")
    assert org.is_trusted_ip("10.1.2.3") and org.is_trusted_ip("::ffff:10.1.2.3")
    assert not org.is_trusted_ip("192.0.2.1") and not org.is_trusted_ip("garbage")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailjournal", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_config_check_accepts_the_example() -> None:
    proc = run_cli("config", "check", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert '"bootstrap_servers": "127.0.0.1:9092"' in proc.stdout
    assert "configuration is valid" in proc.stderr


def test_config_check_reports_errors_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[organization]\naccepted_domains = ["corp.example"]\n'
        '[journal.inbound]\naddress = "j@corp.example"\ncolour = "blue"\n'
    )
    proc = run_cli("config", "check", str(bad))
    assert proc.returncode == 2
    assert "journal.inbound.colour: unknown key" in proc.stderr
    # the NDR rule is reported once the typo is fixed
    bad.write_text(
        '[organization]\naccepted_domains = ["corp.example"]\n[journal.inbound]\naddress = "j@corp.example"\n'
    )
    proc = run_cli("config", "check", str(bad))
    assert proc.returncode == 2
    assert "journal.inbound.ndr_address is required" in proc.stderr


def test_config_check_reports_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[organization\n")
    proc = run_cli("config", "check", str(bad))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


def test_configuration_reference_is_up_to_date() -> None:
    from mailjournal.config_doc import render

    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `python -m mailjournal.config_doc > docs/configuration.md`"
    )


def test_partial_topic_table_keeps_the_topic_defaults() -> None:
    cfg = make_config({"kafka": {"topics": {"outcomes": {"name": "acme.outcomes"}}}})
    assert cfg.kafka.topics.outcomes.name == "acme.outcomes"
    assert cfg.kafka.topics.outcomes.compact  # compaction is not lost by renaming the topic
    assert cfg.kafka.topics.dead_letters.retention_ms == -1
