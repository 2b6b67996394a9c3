"""The Kubernetes manifests agree with the code: commands exist, probes and metrics ports match
the configuration they mount, autoscalers watch the right consumer groups and topics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mailjournal.cli import COMMANDS
from mailjournal.config import load_config

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_deployments_run_real_commands_with_probes_on_the_metrics_port() -> None:
    cfg = load_config(K8S / "mailjournal.toml")
    ports = {
        "ingest": cfg.metrics.ingest_port,
        "journal": cfg.metrics.journal_port,
        "deliver": cfg.metrics.delivery_port,
    }
    deployments = [d for d in documents() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "mailjournal-ingest",
        "mailjournal-journal",
        "mailjournal-delivery",
    }
    for dep in deployments:
        pod = dep["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        command = container["args"][0]
        assert command in COMMANDS
        assert container["args"][1:] == ["--config", "/etc/mailjournal/mailjournal.toml"]
        metrics = next(p for p in container["ports"] if p["name"] == "metrics")
        assert metrics["containerPort"] == ports[command]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports[command])
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "memory" in container["resources"]["limits"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_smtp_service_targets_the_listener_port() -> None:
    cfg = load_config(K8S / "mailjournal.toml")
    (svc,) = [d for d in documents() if d["kind"] == "Service"]
    ingest = next(
        d
        for d in documents()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "mailjournal-ingest"
    )
    container = ingest["spec"]["template"]["spec"]["containers"][0]
    smtp = next(p for p in container["ports"] if p["name"] == "smtp")
    assert smtp["containerPort"] == cfg.ingest.listeners[0].port
    assert cfg.ingest.listeners[0].proxy_protocol  # behind the load balancer
    assert svc["spec"]["ports"][0]["targetPort"] == "smtp"


def test_lag_autoscalers_watch_the_stage_groups_and_topics() -> None:
    cfg = load_config(K8S / "mailjournal.toml")
    scaled = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "ScaledObject"}
    expect = {
        "mailjournal-journal": (cfg.kafka.journal_group, cfg.kafka.topics.messages),
        "mailjournal-delivery": (cfg.kafka.delivery_group, cfg.kafka.topics.journal),
    }
    assert set(scaled) == set(expect)
    for name, (group, topic) in expect.items():
        trigger = scaled[name]["spec"]["triggers"][0]["metadata"]
        assert trigger["consumerGroup"] == group and trigger["topic"] == topic.name
        assert trigger["bootstrapServers"] == cfg.kafka.bootstrap_servers
        # more consumers than partitions would sit idle
        assert scaled[name]["spec"]["maxReplicaCount"] <= topic.partitions
