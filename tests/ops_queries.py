"""What the ops tests share: the PromQL of the alert rules and dashboards, the metrics the code
exports, and small PromQL text helpers (the expressions are ours, written in a regular style;
these helpers are not a PromQL parser)."""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "mailjournal.rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

STAGE_PACKAGES = ("ingest", "journal_worker", "delivery", "relay", "evidence")
# labels Prometheus adds to every scraped series (the PodMonitor adds pod)
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace"})
# series Prometheus makes itself
SYNTHETIC = frozenset({"up"})


@dataclass(frozen=True)
class Query:
    source: str  # "rule <alert>", "<dashboard file> / <panel title> / <refId>", ...
    expr: str
    legend: str = ""
    alert: bool = False  # an alert condition: empty in a healthy system


def scrape_config(inline: bool = False, evidence: bool = False) -> dict[str, Any]:
    """The shipped prometheus.yml; ``inline``: as in inline mode, its commented-out relay job
    uncommented (the lines from ``# - job_name: mailjournal-relay`` to the next job or the
    end); ``evidence``: the receipt writer's job the same way."""
    lines = (PROMETHEUS_DIR / "prometheus.yml").read_text().splitlines()
    for wanted, job in ((inline, "mailjournal-relay"), (evidence, "mailjournal-evidence")):
        if not wanted:
            continue
        start = lines.index(f"  # - job_name: {job}")
        end = next(
            (i for i in range(start, len(lines)) if not lines[i].startswith("  # ")), len(lines)
        )
        lines[start:end] = ["  " + line.removeprefix("  # ") for line in lines[start:end]]
    config: dict[str, Any] = yaml.safe_load("\n".join(lines))
    return config


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [
        Query(f"rule {r.get('alert') or r.get('record')}", r["expr"], alert="alert" in r)
        for r in alert_rules()
    ]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def dashboard_queries() -> list[Query]:
    out: list[Query] = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                legend = target.get("legendFormat", "")
                out.append(
                    Query(
                        f"{name} / {panel['title']} / {target['refId']}",
                        target["expr"],
                        "" if legend == "__auto" else legend,
                    )
                )
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                # label_values(selector, label): the selector is the PromQL Grafana runs
                m = _LABEL_VALUES.match(var["definition"].strip())
                assert m, f"{name}: variable {var['name']}: unsupported query {var['definition']}"
                out.append(Query(f"{name} / variable {var['name']}", m["selector"]))
    return out


# -- PromQL text ----------------------------------------------------------------------------------

_METRIC = re.compile(r"\b(?P<name>(?:mailjournal|process)_[a-z0-9_]+|up)\b(?P<matchers>\{[^}]*\})?")
_MATCHER = re.compile(r'(?P<label>[a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\]|\\.)*"|`[^`]*`)')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\((?P<labels>[^)]*)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _selector_matches(expr: str) -> list[re.Match[str]]:
    # a name followed by "(" would be a function: none of ours, but be safe
    return [m for m in _METRIC.finditer(expr) if not expr[m.end() :].lstrip().startswith("(")]


def selectors(expr: str) -> list[str]:
    """Every metric selector of ``expr`` as written (name and matchers)."""
    return [m.group(0) for m in _selector_matches(expr)]


def metric_refs(expr: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names in its matchers) for every selector of ``expr``."""
    return [(m["name"], _MATCHER.findall(m["matchers"] or "")) for m in _selector_matches(expr)]


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for m in _GROUPING.finditer(expr)
        for label in m["labels"].split(",")
        if label.strip()
    }


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND_LABEL.findall(legend))


def substitute(expr: str, rate_interval: str = "15s") -> str:
    """Grafana's variables as Grafana would expand them with every instance selected."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace('=~"$instance"', '=~".*"')
    )


_THRESHOLD = re.compile(r"\s*(?:>=|<=|==|!=|>|<)\s*(?:bool\s+)?-?[0-9][0-9.e+]*(?![\w.])")
_ABSENT = re.compile(r"absent\((?P<inner>[^()]*)\)")


def without_thresholds(expr: str) -> str:
    """The expression with its comparisons against numbers removed, and ``absent(x)`` as ``x``:
    what an alert condition measures, which has data in a healthy system even when the
    condition (rightly) returns nothing."""
    return _ABSENT.sub(lambda m: m["inner"], _THRESHOLD.sub("", expr))


# -- what the code exports ------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    family: str  # the name in the exposition's HELP/TYPE lines
    type: str
    labels: tuple[str, ...]
    help: str


def exported_metrics() -> dict[str, Exported]:
    """Every sample name the stages, the audit and the Kafka statistics can export, from the
    metric objects themselves (prometheus-client), keyed by sample name."""
    from prometheus_client import Gauge
    from prometheus_client.metrics import MetricWrapperBase

    import mailjournal.consumer.metrics
    import mailjournal.metrics
    import mailjournal.mime
    import mailjournal.smtp.metrics
    from audit import reconcile as audit
    from mailjournal import kafka_stats

    # the metrics modules of the stage packages (a stage may export only shared ones)
    modules = [
        mailjournal.metrics,
        mailjournal.consumer.metrics,
        mailjournal.smtp.metrics,
        mailjournal.mime,
    ] + [
        importlib.import_module(f"{stage}.metrics")
        for stage in STAGE_PACKAGES
        if (ROOT / stage / "metrics.py").exists()
    ]
    objects: list[Any] = []
    for module in modules:
        objects.extend(v for v in vars(module).values() if isinstance(v, MetricWrapperBase))
    objects.extend(audit._audit_gauges(Gauge).values())
    objects.extend(kafka_stats.gauges().values())

    out: dict[str, Exported] = {}
    for obj in objects:
        name, kind, labels = obj._name, obj._type, tuple(obj._labelnames)
        if kind == "counter":
            info = Exported(f"{name}_total", kind, labels, obj._documentation)
            out[f"{name}_total"] = info
        elif kind == "histogram":
            info = Exported(name, kind, labels, obj._documentation)
            out[f"{name}_bucket"] = Exported(name, kind, (*labels, "le"), obj._documentation)
            out[f"{name}_sum"] = out[f"{name}_count"] = info
        else:
            out[name] = Exported(name, kind, labels, obj._documentation)
    # prometheus-client's process collector (single-process stages)
    for name, kind in (
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ):
        out[name] = Exported(name, kind, (), "prometheus-client process metrics")
    return out
