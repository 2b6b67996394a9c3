"""The Kubernetes manifests agree with the code: commands exist, probes and metrics ports match
the configuration they mount, autoscalers watch the right consumer groups and topics; and what
kustomize builds of the base (journaling-only), the inline overlay (with the relay) and the
TLS + SASL component on top of each is what they mean to apply."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mailjournal.cli import COMMANDS
from mailjournal.config import Config, load_config
from mailjournal.topics import relay_retry_topic_name, topic_specs

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"  # the base: journaling-only
OVERLAYS = ROOT / "deploy" / "kubernetes-overlays"
INLINE = OVERLAYS / "inline"  # the base plus the relay and the inline config
TLS_SASL = ROOT / "deploy" / "kubernetes-components" / "kafka-tls-sasl"
KUSTOMIZE = ROOT / ".tools" / "bin" / "kustomize"  # `make kustomize` builds it


def documents(directory: Path = K8S) -> list[dict[str, Any]]:
    """The objects of a directory's manifests (kustomization.yaml, no object, is not one)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def deployment(name: str, directory: Path = K8S) -> dict[str, Any]:
    return next(
        d
        for d in documents(directory)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    )


def overlay_environ() -> dict[str, str]:
    """The environment the TLS + SASL component gives every stage container, as the kubelet hands
    it to the process (``$(KAFKA_PASSWORD)`` expanded)."""
    (patch_ref,) = yaml.safe_load((TLS_SASL / "kustomization.yaml").read_text())["patches"]
    patch = yaml.safe_load((TLS_SASL / patch_ref["path"]).read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return {k: v.replace("$(KAFKA_PASSWORD)", "s3cret") for k, v in env.items() if v is not None}


def bootstrap_ports(cfg: Config) -> set[int]:
    return {int(entry.rpartition(":")[2]) for entry in cfg.kafka.bootstrap_servers.split(",")}


def test_kustomization_lists_every_manifest() -> None:
    for directory, above in ((K8S, []), (INLINE, ["../../kubernetes"])):
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert kust["resources"][: len(above)] == above
        assert set(kust["resources"][len(above) :]) == files, directory


def test_base_config_is_journaling_only_and_the_inline_one_adds_only_the_relay() -> None:
    """The base relays nothing onward (no inline listener, so no relay to run); the inline
    overlay's file is the base's plus the inline listener, the relay's tiers and next hops, so
    that the two never drift apart."""
    base = load_config(K8S / "mailjournal.toml")
    inline = load_config(INLINE / "mailjournal.toml")
    assert not base.relays
    assert inline.relay_listeners() == {"mx"}
    assert inline.relay.dsn_from and inline.relay.inbound and inline.relay.outbound
    # undo the inline additions: what is left is the base
    undone = inline.model_dump()
    for lst in undone["ingest"]["listeners"]:
        lst["relay"] = False
    undone["relay"] = base.model_dump()["relay"]
    undone["kafka"]["topics"]["relay_retry"] = base.model_dump()["kafka"]["topics"]["relay_retry"]
    assert undone == base.model_dump()


def test_deployments_run_real_commands_with_probes_on_the_metrics_port() -> None:
    base = load_config(K8S / "mailjournal.toml")
    inline = load_config(INLINE / "mailjournal.toml")
    assert inline.metrics == base.metrics
    ports = {
        "ingest": base.metrics.ingest_port,
        "journal": base.metrics.journal_port,
        "deliver": base.metrics.delivery_port,
        "relay": base.metrics.relay_port,
        "audit": 9104,
    }
    stages = {
        K8S: {
            "mailjournal-ingest",
            "mailjournal-journal",
            "mailjournal-delivery",
            "mailjournal-audit",
        },
        INLINE: {"mailjournal-relay"},  # only with an inline listener: it exits 2 without one
    }
    for directory, names in stages.items():
        deployments = [d for d in documents(directory) if d["kind"] == "Deployment"]
        assert {d["metadata"]["name"] for d in deployments} == names
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
            assert (
                dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
            )


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
    base = load_config(K8S / "mailjournal.toml")
    inline = load_config(INLINE / "mailjournal.toml")
    relay_tiers = [
        relay_retry_topic_name(inline, i) for i in range(len(inline.relay.retry_delays_seconds))
    ]
    topics = base.kafka.topics
    expect = {
        K8S: {
            "mailjournal-journal": (base.kafka.journal_group, [topics.messages.name]),
            "mailjournal-delivery": (base.kafka.delivery_group, [topics.journal.name]),
        },
        INLINE: {
            "mailjournal-relay": (
                inline.kafka.relay_group,
                [inline.kafka.topics.messages.name, *relay_tiers],
            )
        },
    }
    for (directory, stages), cfg in zip(expect.items(), (base, inline), strict=True):
        scaled = {
            d["metadata"]["name"]: d for d in documents(directory) if d["kind"] == "ScaledObject"
        }
        partitions = {spec.name: spec.partitions for spec in topic_specs(cfg)}
        assert set(scaled) == set(stages)
        for name, (group, watched) in stages.items():
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
            deployment(name, directory)  # the Deployment it scales exists


def validate(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # not core Kubernetes: the autoscalers are checked field by field above
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_manifests_are_valid_kubernetes_objects() -> None:
    # (the component's patch is a fragment: the builds below validate what it makes)
    for directory in (K8S, INLINE):
        validate(documents(directory))


def test_tls_sasl_component_patches_every_stage_container_and_parses() -> None:
    kust = yaml.safe_load((TLS_SASL / "kustomization.yaml").read_text())
    assert kust["kind"] == "Component"
    (patch_ref,) = kust["patches"]
    patch = yaml.safe_load((TLS_SASL / patch_ref["path"]).read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    # strategic merge matches containers by name: the patch must name the base's container
    patched = set()
    for dep in (d for d in documents() + documents(INLINE) if d["kind"] == "Deployment"):
        patched.add(dep["metadata"]["name"])
        assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == [
            container["name"]
        ]
        assert patch_ref["target"]["labelSelector"] == "app.kubernetes.io/name=mailjournal"
        assert dep["metadata"]["labels"]["app.kubernetes.io/name"] == "mailjournal"
    assert "mailjournal-relay" in patched
    for toml in (K8S / "mailjournal.toml", INLINE / "mailjournal.toml"):
        cfg = load_config(toml, environ=overlay_environ())
        assert cfg.kafka.bootstrap_servers.count(":9093") == 3
        assert cfg.kafka.properties["security.protocol"] == "SASL_SSL"
        assert cfg.kafka.properties["sasl.password"] == "s3cret"
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(str(cfg.kafka.properties["ssl.ca.location"])).parent) in mounted


@functools.cache
def _build(path: Path) -> str:
    if not KUSTOMIZE.exists():
        pytest.fail(f"{KUSTOMIZE} is missing: `make kustomize` builds it (`make test` does)")
    res = subprocess.run(
        [str(KUSTOMIZE), "build", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, f"kustomize build {path}: {res.stderr}"
    return res.stdout


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kustomize build path``: the objects ``kubectl apply -k path`` would apply, valid ones."""
    docs = [d for d in yaml.safe_load_all(_build(path)) if d]
    validate(docs)
    assert all(d["metadata"].get("namespace", "mailjournal") == "mailjournal" for d in docs)
    return docs


def names(docs: list[dict[str, Any]], kind: str | None = None) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs if kind in (None, d["kind"])}


def built_config(docs: list[dict[str, Any]], tmp_path: Path) -> tuple[str, Config]:
    """The one config map of a build (its generated name) and the configuration it holds."""
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    toml = tmp_path / f"{configmap['metadata']['name']}.toml"
    toml.write_text(configmap["data"]["mailjournal.toml"])
    return configmap["metadata"]["name"], load_config(toml)


def mounted_configmaps(dep: dict[str, Any]) -> set[str]:
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    return {v["configMap"]["name"] for v in volumes if "configMap" in v}


def test_base_builds_journaling_only(tmp_path: Path) -> None:
    """What kustomize itself makes of the base (it refuses, for one, an overlay inside it)."""
    base = kustomize(K8S)
    files = names(documents())
    assert names(base) - names(base, "ConfigMap") == files
    assert ("Deployment", "mailjournal-relay") not in files
    assert ("ScaledObject", "mailjournal-relay") not in files
    configmap, cfg = built_config(base, tmp_path)
    assert not cfg.relays  # no inline listener: nothing relayed onward
    for dep in (d for d in base if d["kind"] == "Deployment"):
        assert mounted_configmaps(dep) == {configmap}, dep["metadata"]["name"]


def test_inline_overlay_adds_the_relay_and_the_inline_config(tmp_path: Path) -> None:
    base = kustomize(K8S)
    inline = kustomize(INLINE)
    relay = {("Deployment", "mailjournal-relay"), ("ScaledObject", "mailjournal-relay")}
    assert relay <= names(inline)
    added = names(documents(INLINE))
    assert (
        names(inline) - names(inline, "ConfigMap") == names(base) - names(base, "ConfigMap") | added
    )
    configmap, cfg = built_config(inline, tmp_path)  # replaced, not a second one
    assert cfg == load_config(INLINE / "mailjournal.toml")
    assert cfg.relay_listeners() == {"mx"}
    # every stage, the relay too, mounts the replaced config map (its new hash rolls them all)
    deployments = [d for d in inline if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"mailjournal-relay"}
    for dep in deployments:
        assert mounted_configmaps(dep) == {configmap}, dep["metadata"]["name"]


@pytest.mark.parametrize(
    ("overlay", "under"),
    [(OVERLAYS / "kafka-tls-sasl", K8S), (OVERLAYS / "inline-kafka-tls-sasl", INLINE)],
)
def test_tls_sasl_overlays_patch_every_deployment(overlay: Path, under: Path) -> None:
    """The component on the base and on the inline overlay: the same objects, and every
    Deployment's container (the relay's too) gets the Kafka client environment and the CA."""
    kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert [(overlay / r).resolve() for r in kust["resources"]] == [under]
    assert [(overlay / c).resolve() for c in kust["components"]] == [TLS_SASL]
    built = kustomize(overlay)
    assert names(built) == names(kustomize(under))
    deployments = [d for d in built if d["kind"] == "Deployment"]
    assert ("mailjournal-relay" in {d["metadata"]["name"] for d in deployments}) == (
        under == INLINE
    )
    environ = overlay_environ()
    for dep in deployments:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"] for e in container["env"]}
        assert set(environ) | {"KAFKA_PASSWORD"} <= env, dep["metadata"]["name"]
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
    cfg = load_config(INLINE / "mailjournal.toml")
    relay = deployment("mailjournal-relay", INLINE)
    pod_labels = relay["spec"]["template"]["metadata"]["labels"]
    (container,) = relay["spec"]["template"]["spec"]["containers"]
    (policy,) = [
        d
        for d in documents(INLINE)
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
    overlay = load_config(INLINE / "mailjournal.toml", environ=overlay_environ())
    kafka = bootstrap_ports(cfg) | bootstrap_ports(overlay)
    hops = [cfg.relay.inbound, cfg.relay.outbound, *cfg.relay.domains.values()]
    # an MX next hop is any recipient domain's MX, on the SMTP port
    smtp = {25 if hop.mx else hop.port for hop in hops if hop is not None}
    dns = {("UDP", 53), ("TCP", 53)}  # the brokers' and next hops' names, MX records
    assert allowed == {("TCP", port) for port in kafka | smtp} | dns


BUILDS = [K8S, INLINE, OVERLAYS / "kafka-tls-sasl", OVERLAYS / "inline-kafka-tls-sasl"]
# audit is one reader re-checking a window (a report, not a stream): one replica, so neither a
# PDB (minAvailable 1 of 1 would block every node drain) nor an autoscaler
SINGLETONS = {"mailjournal-audit"}


def selects(selector: dict[str, Any], dep: dict[str, Any]) -> bool:
    labels = dep["spec"]["template"]["metadata"]["labels"]
    return bool(selector["matchLabels"].items() <= labels.items())


@pytest.mark.parametrize("build", BUILDS, ids=lambda p: p.name)
def test_every_stage_of_every_build_is_probed_bounded_budgeted_isolated_and_scaled(
    build: Path,
) -> None:
    """What kubectl apply -k gets, per Deployment (the relay's too): probes, requests and a
    memory limit, the image's non-root user on a read-only root with a writable /tmp, a PDB
    that a rolling drain can satisfy, a NetworkPolicy of its own, an autoscaler (CPU or KEDA)."""
    docs = kustomize(build)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    image_user = next(
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    )
    for dep in by_kind["Deployment"]:
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"] and container["livenessProbe"], name
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert {"cpu", "memory"} <= requests.keys() and "memory" in limits, name
        assert requests["memory"] == limits["memory"], name  # no overcommit of memory
        assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsUser']}" == (
            image_user
        ), name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        (tmp_volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in tmp_volume, name  # the image's WORKDIR, writable
        budgets = [p for p in by_kind["PodDisruptionBudget"] if selects(p["spec"]["selector"], dep)]
        policies = [p for p in by_kind["NetworkPolicy"] if selects(p["spec"]["podSelector"], dep)]
        scalers = [
            s
            for s in by_kind["HorizontalPodAutoscaler"] + by_kind["ScaledObject"]
            if s["spec"]["scaleTargetRef"]["name"] == name
        ]
        assert len(policies) == 1, name
        if name in SINGLETONS:
            assert dep["spec"]["replicas"] == 1 and not budgets and not scalers, name
            continue
        (budget,) = budgets
        floor = min(
            [dep["spec"]["replicas"]]
            + [s["spec"].get("minReplicas", s["spec"].get("minReplicaCount", 0)) for s in scalers]
        )
        assert budget["spec"]["minAvailable"] < floor, name  # a drain can evict one pod
        assert len(scalers) == 1, name


@pytest.mark.parametrize("build", BUILDS, ids=lambda p: p.name)
def test_keda_scalers_are_well_formed(build: Path) -> None:
    """The KEDA CRD's shape (no schema of it to validate against here): trigger metadata is a
    map of strings (a bare number is refused by the API server), replica bounds ordered."""
    scaled = [d for d in kustomize(build) if d["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert set(spec) <= {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "cooldownPeriod",
            "pollingInterval",
            "idleReplicaCount",
            "fallback",
            "advanced",
            "triggers",
        }, obj["metadata"]["name"]
        assert 0 < spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert isinstance(spec.get("cooldownPeriod", 0), int)
        for trigger in spec["triggers"]:
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger


@pytest.mark.parametrize(
    ("stage", "extra"),
    [
        ("journal", lambda cfg: {urlsplit(cfg.directory.ldap.url).port or 389}),
        ("delivery", lambda cfg: {cfg.delivery.smart_host.port}),
        ("audit", lambda cfg: set()),
    ],
)
def test_worker_network_policies_admit_prometheus_and_let_out_only_what_they_use(
    stage: str, extra: Any
) -> None:
    """Ingress: metrics from Prometheus only. Egress: Kafka (plaintext and the TLS overlay's
    port), DNS, and the one server of the stage's own (the directory, the smart host)."""
    cfg = load_config(K8S / "mailjournal.toml")
    dep = deployment(f"mailjournal-{stage}")
    (policy,) = [
        d
        for d in documents()
        if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], dep)
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    (prometheus,) = rule["from"]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    allowed = set()
    for egress in policy["spec"]["egress"]:
        assert egress.get("ports") and "to" not in egress, egress
        allowed |= {(p["protocol"], p["port"]) for p in egress["ports"]}
    kafka = bootstrap_ports(cfg) | bootstrap_ports(
        load_config(K8S / "mailjournal.toml", environ=overlay_environ())
    )
    dns = {("UDP", 53), ("TCP", 53)}
    assert allowed == {("TCP", port) for port in kafka | extra(cfg)} | dns
