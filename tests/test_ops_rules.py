"""Prometheus rules, scrape configuration and Grafana dashboards, checked without a pipeline:
promtool's own checks and unit tests, every metric a query names exists in the code with the
labels the query uses, the dashboards are generated from deploy/grafana/generate.py, the metrics
reference lists every metric, and the scrape targets agree with the configuration and the
Kubernetes manifests. (tests/test_ops_prometheus.py runs the queries against live data.)"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mailjournal.config import MetricsConfig, load_config
from tests.ops_queries import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    ROOT,
    RULE_TESTS,
    RULES,
    SYNTHETIC,
    TARGET_LABELS,
    Query,
    alert_rules,
    dashboard_queries,
    dashboards,
    exported_metrics,
    grouping_labels,
    legend_labels,
    metric_refs,
    rule_queries,
    scrape_config,
    selectors,
    without_thresholds,
)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
STAGES = ("ingest", "journal", "delivery", "relay")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


# -- promtool ---------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in res.stdout


def test_promtool_check_config(tmp_path: Path) -> None:
    res = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    # with the relay's and the receipt writer's jobs uncommented, the rules by absolute path
    inline = scrape_config(inline=True, evidence=True)
    inline["rule_files"] = [str(PROMETHEUS_DIR / path) for path in inline["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(inline))
    res = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_promtool_unit_tests() -> None:
    assert RULE_TESTS
    res = promtool("test", "rules", *map(str, RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(RULE_TESTS), res.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in alert_rules()}
    assert alerts - fired == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"
    assert (fired | quiet) - alerts == set(), "unit tests of alerts that do not exist"


def test_alerts_are_documented_for_the_on_call() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Mailjournal[A-Z]\w+", name), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        assert ann["runbook_url"] == f"docs/operations.md#{name.lower()}", name


# -- names and labels against the code ----------------------------------------------------------


def all_queries() -> list[Query]:
    return rule_queries() + dashboard_queries()


def test_queries_name_only_exported_metrics_and_their_labels() -> None:
    exported = exported_metrics()
    problems = []
    for q in all_queries():
        refs = metric_refs(q.expr)
        if not refs:
            problems.append(f"{q.source}: no metric in {q.expr!r}")
        known: set[str] = set(TARGET_LABELS)
        for name, labels in refs:
            if name in SYNTHETIC:
                continue
            if name not in exported:
                problems.append(f"{q.source}: {name} is not exported by any stage")
                continue
            allowed = set(exported[name].labels) | TARGET_LABELS
            known |= allowed
            problems += [
                f"{q.source}: {name} has no label {label!r}"
                for label in labels
                if label not in allowed
            ]
        # by (...) and legends may only name labels some series of the expression has
        for label in grouping_labels(q.expr) | legend_labels(q.legend):
            if label not in known | {"le"}:
                problems.append(f"{q.source}: no series of the expression has label {label!r}")
    assert problems == []


def test_metric_naming_conventions() -> None:
    """Prometheus naming: our prefix, _total counters, base units on histograms."""
    for name, info in exported_metrics().items():
        if name.startswith("process_"):
            continue
        assert name.startswith("mailjournal_"), name
        if info.type == "counter":
            assert info.family.endswith("_total"), name
        if info.type == "histogram":
            assert re.search(r"_(seconds|bytes|messages)$", info.family), info.family
        if info.type == "gauge":
            assert not name.endswith("_total"), name
        assert not {"address", "recipient", "sender", "message_id", "event_id", "copy_id"} & set(
            info.labels
        ), f"{name}: per-message label"


def test_threshold_stripping_keeps_what_an_alert_measures() -> None:
    """The live test evaluates alert conditions without their thresholds; show what that is."""
    assert without_thresholds('up{job=~"a|b"} == 0') == 'up{job=~"a|b"}'
    assert (
        without_thresholds('absent(up{job="x"}) or absent(up{job="y"})')
        == 'up{job="x"} or up{job="y"}'
    )
    assert without_thresholds("time() - max(x) > 7200") == "time() - max(x)"
    assert without_thresholds("sum(rate(a[5m])) / sum(rate(b[15m])) > 0.05") == (
        "sum(rate(a[5m])) / sum(rate(b[15m]))"
    )
    # numbers that are not thresholds stay
    assert without_thresholds("histogram_quantile(0.99, x) > 1") == "histogram_quantile(0.99, x)"
    assert without_thresholds("x offset 15m") == "x offset 15m"


# -- dashboards ------------------------------------------------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_dashboards_are_generated_from_generate_py() -> None:
    rendered = _generator().render()
    on_disk = {p.name: p.read_text() for p in (GRAFANA_DIR / "dashboards").glob("*.json")}
    stale = sorted(n for n in rendered if on_disk.get(n) != rendered[n])
    extra = sorted(set(on_disk) - set(rendered))
    assert (stale, extra) == ([], []), "run: .venv/bin/python deploy/grafana/generate.py"


def test_dashboard_structure() -> None:
    boards = dashboards()
    assert set(boards) == {
        "mailjournal-overview.json",
        *(f"mailjournal-{s}.json" for s in STAGES),
    }
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                # every variable a query uses is defined on the dashboard
                for var in re.findall(r"\$(\w+)", target["expr"]):
                    assert var.startswith("__") or var in variables, (name, var)
        # panels never overlap
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            mine = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & mine, (name, panel["title"])
            cells |= mine


def test_stage_dashboards_cover_what_the_issue_asks_for() -> None:
    """Throughput, reply codes, latencies, lag, retries, NDRs, dead letters."""
    boards = {n: json_text for n, json_text in dashboards().items()}
    text = {n: str(b) for n, b in boards.items()}
    assert "mailjournal_ingest_messages_accepted_total" in text["mailjournal-ingest.json"]
    assert "reply_class" in text["mailjournal-ingest.json"]
    assert "mailjournal_ingest_kafka_ack_seconds_bucket" in text["mailjournal-ingest.json"]
    assert "mailjournal_kafka_consumer_lag" in text["mailjournal-journal.json"]
    delivery = text["mailjournal-delivery.json"]
    for metric in (
        "mailjournal_delivery_attempts_total",
        "mailjournal_delivery_smtp_seconds_bucket",
        "mailjournal_delivery_retry_waiting",
        "mailjournal_delivery_ndrs_total",
        "mailjournal_delivery_dead_letters_total",
        "mailjournal_kafka_consumer_lag",
    ):
        assert metric in delivery, metric
    relay = text["mailjournal-relay.json"]
    for metric in (
        "mailjournal_relay_messages_total",  # throughput by outcome
        "mailjournal_relay_latency_seconds_bucket",  # to the next hop
        "mailjournal_delivery_retry_waiting",  # the retry tiers
        "mailjournal_relay_dsns_total",  # DSNs to senders
        "mailjournal_delivery_dead_letters_total",
        "mailjournal_delivery_inflight",
        "mailjournal_kafka_consumer_lag",
    ):
        assert metric in relay, metric
    # every query of the relay's dashboard reads the relay's series only
    for q in dashboard_queries():
        if q.source.startswith("mailjournal-relay.json / ") and "variable" not in q.source:
            assert all('job="mailjournal-relay"' in m for m in selectors(q.expr)), q


def test_grafana_provisioning() -> None:
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "mailjournal.yml").read_text()
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")


# -- scrape targets --------------------------------------------------------------------------------


def test_static_scrape_config_matches_the_default_metrics_ports() -> None:
    """`make run` (journaling-only: no listener of config/mailjournal.example.toml is inline)
    starts no relay, so the relay's job is there only to uncomment for inline mode."""
    assert not load_config(ROOT / "config" / "mailjournal.example.toml").relays

    def jobs(config: dict[str, Any]) -> dict[str, list[str]]:
        return {
            job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
        }

    config = scrape_config()
    defaults = MetricsConfig()
    stages = {
        "mailjournal-ingest": [f"127.0.0.1:{defaults.ingest_port}"],
        "mailjournal-journal": [f"127.0.0.1:{defaults.journal_port}"],
        "mailjournal-delivery": [f"127.0.0.1:{defaults.delivery_port}"],
        "mailjournal-audit": ["127.0.0.1:9104"],
    }
    assert jobs(config) == stages
    assert config["rule_files"] == ["rules/*.yml"]
    relay = {"mailjournal-relay": [f"127.0.0.1:{defaults.relay_port}"]}
    assert jobs(scrape_config(inline=True)) == stages | relay


def test_podmonitor_selects_the_kubernetes_deployments() -> None:
    """The PodMonitor picks the pods of deploy/kubernetes/ (and of the inline overlay) and names
    their jobs as the rules do: the relay's job exists only where the relay is deployed, so a
    journaling-only cluster has no relay target to be down."""
    (monitor,) = list(yaml.safe_load_all((PROMETHEUS_DIR / "podmonitor.yaml").read_text()))
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (job_relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    assert job_relabel["sourceLabels"] == [
        "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    ]
    manifests: list[dict[str, Any]] = []
    # the base's stages and the relay the inline overlay adds
    for directory in (
        ROOT / "deploy" / "kubernetes",
        ROOT / "deploy" / "kubernetes-overlays" / "inline",
    ):
        for path in sorted(directory.glob("*.yaml")):
            manifests.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    jobs = set()
    for dep in (d for d in manifests if d["kind"] == "Deployment"):
        pod = dep["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items(), dep["metadata"]["name"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in ports, dep["metadata"]["name"]
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        jobs.add(job_relabel["replacement"].replace("$1", component))
    rule_jobs = set(re.findall(r'job="(mailjournal-\w+)"', RULES.read_text()))
    assert rule_jobs <= jobs | {"mailjournal-audit"}
    assert {f"mailjournal-{s}" for s in STAGES} <= jobs


# -- the metrics reference -----------------------------------------------------------------------


def documented_metrics() -> dict[str, dict[str, str]]:
    """Rows of the tables in docs/metrics.md: | `name` | type | labels | meaning | used by |."""
    rows: dict[str, dict[str, str]] = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"^\|\s*`(?P<name>[a-z_]+)`\s*\|(?P<rest>.*)\|\s*$", line)
        if not m:
            continue
        cells = [c.strip() for c in m["rest"].split("|")]
        rows[m["name"]] = {"type": cells[0], "labels": cells[1], "used_by": cells[-1]}
    return rows


def _families() -> dict[str, Any]:
    return {
        info.family: info
        for name, info in exported_metrics().items()
        if not name.startswith("process_")
    }


def usage() -> dict[str, set[str]]:
    """metric family -> the alerts and dashboards that use it."""
    families = _families()
    sample_to_family = {
        n: i.family for n, i in exported_metrics().items() if not n.startswith("process_")
    }
    used: dict[str, set[str]] = {f: set() for f in families}
    for q in all_queries():
        if q.source.startswith("rule "):
            who = q.source.removeprefix("rule ")
        else:
            board = q.source.split(" / ")[0].removeprefix("mailjournal-").removesuffix(".json")
            who = f"dashboard:{board}"
        for name, _ in metric_refs(q.expr):
            if name in sample_to_family:
                used[sample_to_family[name]].add(who)
    return used


def test_metrics_reference_lists_every_metric() -> None:
    docs = documented_metrics()
    families = _families()
    assert sorted(set(families) - set(docs)) == [], "metrics missing from docs/metrics.md"
    assert sorted(set(docs) - set(families)) == [], "docs/metrics.md lists unknown metrics"
    used = usage()
    for family, info in families.items():
        row = docs[family]
        assert row["type"] == info.type, family
        labels = {x.strip(" `") for x in row["labels"].split(",") if x.strip(" `-—")}
        assert labels == set(info.labels), family
        listed = {x.strip(" `") for x in row["used_by"].split(",") if x.strip(" `-—")}
        assert listed == used[family], (family, sorted(used[family]))
