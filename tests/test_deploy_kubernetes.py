"""The Kubernetes manifests agree with the code: commands exist, probes and metrics ports match
the configuration they mount, autoscalers watch the right consumer groups and topics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailjournal.cli import COMMANDS
from mailjournal.config import Config, load_config
from mailjournal.topics import relay_retry_topic_name, topic_specs

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OVERLAY = K8S.parent / "kubernetes-overlays" / "kafka-tls-sasl"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def deployment(name: str) -> dict[str, Any]:
    return next(
        d for d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    )


def overlay_environ() -> dict[str, str]:
    """The environment the TLS + SASL overlay gives every stage container, as the kubelet hands
    it to the process (``$(KAFKA_PASSWORD)`` expanded)."""
    (patch_ref,) = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["patches"]
    patch = yaml.safe_load((OVERLAY / patch_ref["path"]).read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return {k: v.replace("$(KAFKA_PASSWORD)", "s3cret") for k, v in env.items() if v is not None}


def bootstrap_ports(cfg: Config) -> set[int]:
    return {int(entry.rpartition(":")[2]) for entry in cfg.kafka.bootstrap_servers.split(",")}


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
        "relay": cfg.metrics.relay_port,
        "audit": 9104,
    }
    deployments = [d for d in documents() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "mailjournal-ingest",
        "mailjournal-journal",
        "mailjournal-delivery",
        "mailjournal-relay",
        "mailjournal-audit",
    }
    assert cfg.relays  # the relay has originals to forward (it exits 2 without an inline listener)
    for dep in deployments:
        pod = dep["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        command = container["args"][0]
        assert command in COMMANDS
        assert container["args"][1:3] == ["--config", "/etc/mailjournal/mailjournal.toml"]
        if command == "audit":
            args = container["args"]
            assert args[args.index("--metrics-port") + 1] == str(ports["audit"])
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
    assert cfg.ingest.listeners[0].proxy_protocol_peers  # and believing only it
    assert svc["spec"]["ports"][0]["targetPort"] == "smtp"


def test_lag_autoscalers_watch_the_stage_groups_and_topics() -> None:
    cfg = load_config(K8S / "mailjournal.toml")
    topics = cfg.kafka.topics
    scaled = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "ScaledObject"}
    relay_tiers = [
        relay_retry_topic_name(cfg, i) for i in range(len(cfg.relay.retry_delays_seconds))
    ]
    expect = {
        "mailjournal-journal": (cfg.kafka.journal_group, [topics.messages.name]),
        "mailjournal-delivery": (cfg.kafka.delivery_group, [topics.journal.name]),
        "mailjournal-relay": (cfg.kafka.relay_group, [topics.messages.name, *relay_tiers]),
    }
    partitions = {spec.name: spec.partitions for spec in topic_specs(cfg)}
    assert set(scaled) == set(expect)
    for name, (group, watched) in expect.items():
        triggers = [t["metadata"] for t in scaled[name]["spec"]["triggers"]]
        assert all(t["type"] == "kafka" for t in scaled[name]["spec"]["triggers"])
        assert [t["topic"] for t in triggers] == watched
        for trigger in triggers:
            assert trigger["consumerGroup"] == group
            assert trigger["bootstrapServers"] == cfg.kafka.bootstrap_servers
            # a held retry tier (its head not yet due) must not scale the stage out
            tier = trigger["topic"] in relay_tiers
            assert trigger.get("excludePersistentLag") == ("true" if tier else None)
        # more consumers than partitions would sit idle
        assert scaled[name]["spec"]["maxReplicaCount"] <= max(partitions[t] for t in watched)
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        deployment(name)  # the Deployment it scales exists


def test_manifests_are_valid_kubernetes_objects() -> None:
    import kubernetes_validate

    for doc in documents():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # not core Kubernetes: the autoscalers are checked field by field above
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_tls_sasl_overlay_patches_every_stage_container_and_parses() -> None:
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert [(OVERLAY / r).resolve() for r in kust["resources"]] == [K8S]
    (patch_ref,) = kust["patches"]
    patch = yaml.safe_load((OVERLAY / patch_ref["path"]).read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    # strategic merge matches containers by name: the patch must name the base's container
    patched = set()
    for dep in (d for d in documents() if d["kind"] == "Deployment"):
        patched.add(dep["metadata"]["name"])
        assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == [
            container["name"]
        ]
        assert patch_ref["target"]["labelSelector"] == "app.kubernetes.io/name=mailjournal"
        assert dep["metadata"]["labels"]["app.kubernetes.io/name"] == "mailjournal"
    assert "mailjournal-relay" in patched
    cfg = load_config(K8S / "mailjournal.toml", environ=overlay_environ())
    assert cfg.kafka.bootstrap_servers.count(":9093") == 3
    assert cfg.kafka.properties["security.protocol"] == "SASL_SSL"
    assert cfg.kafka.properties["sasl.password"] == "s3cret"
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(str(cfg.kafka.properties["ssl.ca.location"])).parent) in mounted


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize path``: the objects ``kubectl apply -k path`` would apply."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    res = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def test_base_and_overlay_build_and_the_overlay_patches_every_deployment() -> None:
    """What kustomize itself makes of them (it refuses, for one, an overlay inside its base)."""
    base = kustomize(K8S)
    names = {
        (d["kind"], d["metadata"]["name"]) for d in documents() if d["kind"] != "Kustomization"
    }
    assert {(d["kind"], d["metadata"]["name"]) for d in base if d["kind"] != "ConfigMap"} == names
    assert all(d["metadata"].get("namespace", "mailjournal") == "mailjournal" for d in base)
    deployments = [d for d in kustomize(OVERLAY) if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        name for kind, name in names if kind == "Deployment"
    }
    environ = overlay_environ()
    for dep in deployments:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"] for e in container["env"]}
        assert set(environ) <= env, dep["metadata"]["name"]
        mounts = {m["name"] for m in container["volumeMounts"]}
        assert {"kafka-ca", "config"} <= mounts, dep["metadata"]["name"]


def test_network_policy_admits_only_the_balancer_and_prometheus_to_ingest() -> None:
    """SMTP only from the balancer's networks, which are the PROXY listener's peers; metrics only
    from Prometheus; nothing else (no other rule, no rule without a source or a port)."""
    cfg = load_config(K8S / "mailjournal.toml")
    (lst,) = cfg.ingest.listeners
    ingest = deployment("mailjournal-ingest")
    pod_labels = ingest["spec"]["template"]["metadata"]["labels"]
    container = ingest["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    (policy,) = [
        d
        for d in documents()
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and rule.get("ports"), rule  # no rule open to all
        (port,) = rule["ports"]
        assert port["port"] in port_names
        rules[port["port"]] = rule["from"]
    assert set(rules) == {"smtp", "metrics"}
    assert sorted(src["ipBlock"]["cidr"] for src in rules["smtp"]) == sorted(
        lst.proxy_protocol_peers
    )
    assert all("except" not in src["ipBlock"] for src in rules["smtp"])
    (prometheus,) = rules["metrics"]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in prometheus  # same rule: Prometheus pods of that namespace
    metrics = next(p for p in container["ports"] if p["name"] == "metrics")
    assert metrics["containerPort"] == cfg.metrics.ingest_port


def test_relay_network_policy_admits_prometheus_and_lets_out_kafka_dns_smtp() -> None:
    """Ingress: the metrics port from Prometheus only. Egress: Kafka (plaintext and the TLS
    overlay's port), DNS, and SMTP on every next hop's port; nothing else."""
    cfg = load_config(K8S / "mailjournal.toml")
    relay = deployment("mailjournal-relay")
    pod_labels = relay["spec"]["template"]["metadata"]["labels"]
    (container,) = relay["spec"]["template"]["spec"]["containers"]
    (policy,) = [
        d
        for d in documents()
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    (prometheus,) = rule["from"]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in prometheus
    metrics = next(p for p in container["ports"] if p["name"] == "metrics")
    assert metrics["containerPort"] == cfg.metrics.relay_port

    allowed = set()
    for egress in policy["spec"]["egress"]:
        assert egress.get("ports"), egress  # no rule open on every port
        allowed |= {(p["protocol"], p["port"]) for p in egress["ports"]}
    overlay = load_config(K8S / "mailjournal.toml", environ=overlay_environ())
    kafka = bootstrap_ports(cfg) | bootstrap_ports(overlay)
    hops = [cfg.relay.inbound, cfg.relay.outbound, *cfg.relay.domains.values()]
    # an MX next hop is any recipient domain's MX, on the SMTP port
    smtp = {25 if hop.mx else hop.port for hop in hops if hop is not None}
    dns = {("UDP", 53), ("TCP", 53)}  # the brokers' and next hops' names, MX records
    assert allowed == {("TCP", port) for port in kafka | smtp} | dns
