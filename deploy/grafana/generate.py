"""Generate the Grafana dashboards in deploy/grafana/dashboards/ (run after editing this file):

    .venv/bin/python deploy/grafana/generate.py

The JSON files are committed so Grafana can provision them as they are; tests/test_ops_rules.py
fails when they are out of date with this file, and tests/test_ops_prometheus.py runs every
query against a real Prometheus scraping a running pipeline.

Conventions: every panel uses the ``datasource`` variable; rates use ``$__rate_interval``; the
stage dashboards filter on ``$instance`` (all by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


@dataclass
class Q:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Q]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    stack: bool = False
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def sel(job: str, extra: str = "", instance: bool = True) -> str:
    """A label selector body for a stage's series."""
    parts = [f'job="mailjournal-{job}"']
    if instance:
        parts.append('instance=~"$instance"')
    if extra:
        parts.append(extra)
    return ", ".join(parts)


def rate(metric: str, labels: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{{{labels}}}[{RATE}]))"


def quantile(q: float, metric: str, labels: str, by: str = "") -> str:
    keys = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{{{labels}}}[{RATE}])))"


def quantiles(metric: str, labels: str, by: str = "", legend: str = "") -> list[Q]:
    prefix = f"{legend} " if legend else ""
    return [
        Q(quantile(0.5, metric, labels, by), f"{prefix}p50"),
        Q(quantile(0.99, metric, labels, by), f"{prefix}p99"),
    ]


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in p.thresholds]
    out: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": q.expr,
                "legendFormat": q.legend or "__auto",
                "range": True,
            }
            for i, q in enumerate(p.queries)
        ],
        "fieldConfig": {
            "defaults": {
                "unit": p.unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "color": {"mode": "thresholds" if p.kind == "stat" else "palette-classic"},
            },
            "overrides": [],
        },
    }
    if p.kind == "timeseries":
        out["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
        }
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
            "orientation": "auto",
        }
    return out


def dashboard(uid: str, title: str, description: str, rows: list[Row], job: str | None) -> Any:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        pid, y, x, line = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, line = 0, y + line, 0
            panels.append(_panel(p, pid, x, y))
            pid, x, line = pid + 1, x + p.width, max(line, p.height)
        y += line
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
            "includeAll": False,
            "multi": False,
        }
    ]
    if job:
        query = f'label_values(up{{job="mailjournal-{job}"}}, instance)'
        variables.append(
            {
                "name": "instance",
                "label": "Instance",
                "type": "query",
                "datasource": DS,
                "definition": query,
                "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "refresh": 2,
                "sort": 1,
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "hide": 0,
                "options": [],
                "regex": "",
            }
        )
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mailjournal"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "links": [
            {
                "type": "dashboards",
                "tags": ["mailjournal"],
                "asDropdown": True,
                "title": "mailjournal",
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables},
        "panels": panels,
    }


# -- the dashboards -------------------------------------------------------------------------------

STAGES = 'job=~"mailjournal-(ingest|journal|delivery|relay)"'


def overview() -> Any:
    rows = [
        Row(
            "Health",
            [
                Panel(
                    "Targets up",
                    [Q(f"sum by (job) (up{{{STAGES}}})", "{{job}}")],
                    kind="stat",
                    width=6,
                    height=4,
                    description="Instances Prometheus can scrape, per stage.",
                ),
                Panel(
                    "Ready",
                    [Q(f"sum by (job) (mailjournal_ready{{{STAGES}}})", "{{job}}")],
                    kind="stat",
                    width=6,
                    height=4,
                    description="Instances reporting ready (as their /readyz), per stage.",
                ),
                Panel(
                    "Audit gaps",
                    [Q("sum(mailjournal_audit_gaps)", "gaps")],
                    kind="stat",
                    width=4,
                    height=4,
                    thresholds=[(1, "red")],
                    description="Gaps found by the last `mailjournal audit` run (0 = every "
                    "accepted message is accounted for).",
                ),
                Panel(
                    "Last audit",
                    [Q("time() - max(mailjournal_audit_last_run_timestamp_seconds)", "age")],
                    unit="s",
                    kind="stat",
                    width=4,
                    height=4,
                    thresholds=[(7200, "orange")],
                    description="Seconds since the last audit run finished.",
                ),
                Panel(
                    "Versions",
                    [
                        Q(
                            'count by (job, version) (mailjournal_build_info{job=~"mailjournal-.*"})',
                            "{{job}} {{version}}",
                        )
                    ],
                    kind="stat",
                    width=4,
                    height=4,
                    description="Running instances per stage and mailjournal version.",
                ),
            ],
        ),
        Row(
            "Flow",
            [
                Panel(
                    "Messages and journal copies",
                    [
                        Q(
                            "sum(rate(mailjournal_ingest_messages_accepted_total[$__rate_interval]))",
                            "accepted (250)",
                        ),
                        Q(
                            "sum(rate(mailjournal_journal_copies_emitted_total[$__rate_interval]))",
                            "journal copies emitted",
                        ),
                        Q(
                            'sum(rate(mailjournal_delivery_outcomes_total{kind="journal", '
                            'status="delivered"}[$__rate_interval]))',
                            "journal copies delivered",
                        ),
                        Q(
                            'sum(rate(mailjournal_relay_messages_total{result="delivered"}'
                            "[$__rate_interval]))",
                            "originals relayed",
                        ),
                    ],
                    unit="ops",
                    description="Messages accepted at ingest, journal copies the journal worker "
                    "emitted, journal copies the smart host accepted, and originals of inline "
                    "listeners their next hops accepted (relay), per second.",
                ),
                Panel(
                    "Refused at ingest",
                    [
                        Q(
                            "sum by (reply_class, reason) "
                            "(rate(mailjournal_ingest_messages_refused_total[$__rate_interval]))",
                            "{{reply_class}} {{reason}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Messages refused at or after DATA. 4xx kafka_* and queue_full "
                    "mean Kafka trouble.",
                ),
                Panel(
                    "Consumer lag by stage",
                    [
                        Q(
                            "sum by (stage) (mailjournal_kafka_consumer_lag"
                            '{job=~"mailjournal-(journal|delivery|relay)"})',
                            "{{stage}}",
                        )
                    ],
                    description="Records waiting for the journal, delivery and relay stages "
                    "(retry tiers included: they hold copies until due).",
                ),
                Panel(
                    "Latency",
                    [
                        Q(
                            quantile(
                                0.99,
                                "mailjournal_ingest_kafka_ack_seconds",
                                'job="mailjournal-ingest"',
                            ),
                            "Kafka ack p99",
                        ),
                        Q(
                            quantile(
                                0.5,
                                "mailjournal_delivery_end_to_end_seconds",
                                'job="mailjournal-delivery", kind="journal"',
                            ),
                            "accepted to delivered p50",
                        ),
                        Q(
                            quantile(
                                0.99,
                                "mailjournal_delivery_end_to_end_seconds",
                                'job="mailjournal-delivery", kind="journal"',
                            ),
                            "accepted to delivered p99",
                        ),
                    ],
                    unit="s",
                    description="Kafka acknowledgement at ingest, and the time from ingest's "
                    "250 to the smart host's 250 for journal copies.",
                ),
                Panel(
                    "Retries, NDRs, dead letters",
                    [
                        Q(
                            'sum(mailjournal_delivery_retry_waiting{job="mailjournal-delivery"})',
                            "copies waiting for retry",
                        ),
                        Q(
                            'sum(mailjournal_delivery_retry_waiting{job="mailjournal-relay"})',
                            "originals waiting for retry (relay)",
                        ),
                        Q(
                            "sum(rate(mailjournal_delivery_ndrs_total[$__rate_interval]))",
                            "NDRs/s",
                        ),
                        # two queries, not a sum: a stage that never dead-lettered has no series
                        Q(
                            "sum(rate(mailjournal_journal_dead_letters_total[$__rate_interval]))",
                            "dead letters/s (journal)",
                        ),
                        Q(
                            'sum(rate(mailjournal_delivery_dead_letters_total{job="mailjournal-'
                            'delivery"}[$__rate_interval]))',
                            "dead letters/s (delivery)",
                        ),
                        Q(
                            'sum(rate(mailjournal_delivery_dead_letters_total{job="mailjournal-'
                            'relay"}[$__rate_interval]))',
                            "dead letters/s (relay)",
                        ),
                    ],
                    description="Journal copies and relayed originals waiting on retry tiers, "
                    "NDRs created for journal copies, and records put on the dead-letter topic.",
                ),
                Panel(
                    "Delivery attempts by result",
                    [
                        Q(
                            "sum by (result) (rate(mailjournal_delivery_attempts_total"
                            '{job="mailjournal-delivery"}[$__rate_interval]))',
                            "{{result}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="SMTP attempts at the smart host: delivered (2xx), transient "
                    "(4xx, timeouts), permanent (5xx).",
                ),
            ],
        ),
        Row(
            "Audit",
            [
                Panel(
                    "Audit: journal copies by state",
                    [Q("sum by (state) (mailjournal_audit_copies)", "{{state}}")],
                    description="States of the journal copies owed for the messages in the "
                    "last audit's window.",
                ),
                Panel(
                    "Audit: messages and duplicate deliveries",
                    [
                        Q("sum(mailjournal_audit_messages)", "messages in window"),
                        Q(
                            "sum(mailjournal_audit_duplicate_deliveries)",
                            "copies delivered more than once",
                        ),
                    ],
                    description="Accepted messages the audit checked, and copies delivered "
                    "twice (at-least-once delivery after a crash; not a gap).",
                ),
            ],
        ),
        Row(
            "Evidence (signed journal receipts)",
            [
                Panel(
                    "Receipts written",
                    [
                        Q(
                            "sum (rate(mailjournal_evidence_receipts_written_total[$__rate_interval]))",
                            "receipts/s",
                        ),
                        Q(
                            "sum (mailjournal_evidence_pending_messages)",
                            "messages awaiting a receipt",
                        ),
                    ],
                    description="Journal receipts committed by the receipt writer, and the messages "
                    "it has seen whose copies are not all final yet (docs/evidence.md).",
                ),
                Panel(
                    "Lag to receipt",
                    quantiles("mailjournal_evidence_receipt_lag_seconds", ""),
                    unit="s",
                    description="From the last final outcome of a message's copies to its "
                    "signed receipt.",
                ),
                Panel(
                    "Chain verification failures",
                    [
                        Q(
                            "sum by (kind) (increase(mailjournal_evidence_verification_failures_total[$__rate_interval]))",
                            "{{kind}}",
                        )
                    ],
                    description="Problems the writer found in the chain heads it restored at start: "
                    "any is a compliance incident (MailjournalEvidenceVerificationFailed).",
                ),
            ],
        ),
        Row(
            "Resources",
            [
                Panel(
                    "CPU by stage",
                    [
                        Q(
                            f"sum by (job) (rate(process_cpu_seconds_total{{{STAGES}}}[{RATE}]))",
                            "{{job}}",
                        )
                    ],
                    unit="percentunit",
                    description="CPU seconds per second (1 = one core), from the stages' own "
                    "process metrics (not exported by ingest with --workers > 1).",
                ),
                Panel(
                    "Resident memory by stage",
                    [Q(f"sum by (job) (process_resident_memory_bytes{{{STAGES}}})", "{{job}}")],
                    unit="bytes",
                    description="Resident set size per stage (all instances).",
                ),
            ],
        ),
    ]
    return dashboard(
        "mailjournal-overview",
        "mailjournal / Overview",
        "The whole pipeline: health, flow from ingest to the archive, latency, lag, failures.",
        rows,
        None,
    )


def ingest() -> Any:
    s = sel("ingest")
    rows = [
        Row(
            "SMTP",
            [
                Panel(
                    "Messages accepted by listener",
                    [
                        Q(
                            rate("mailjournal_ingest_messages_accepted_total", s, "listener"),
                            "{{listener}}",
                        )
                    ],
                    unit="ops",
                    description="Messages answered 250 after Kafka acknowledged their event.",
                ),
                Panel(
                    "Messages refused by reply class and reason",
                    [
                        Q(
                            rate(
                                "mailjournal_ingest_messages_refused_total",
                                s,
                                "reply_class, reason",
                            ),
                            "{{reply_class}} {{reason}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Refusals at or after DATA: 4xx kafka_error, kafka_timeout, "
                    "queue_full = Kafka trouble; 4xx inflight_* = ingest's memory budget; 5xx "
                    "size, bare_newline, line_too_long = the message itself.",
                ),
                Panel(
                    "Command refusals",
                    [
                        Q(
                            rate(
                                "mailjournal_ingest_refusals_total",
                                s,
                                "command, reply_class, reason",
                            ),
                            "{{command}} {{reply_class}} {{reason}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Refused SMTP commands (CONNECT, MAIL, RCPT, AUTH, ...): relay "
                    "denied, unknown users, limits, syntax, sequence.",
                ),
                Panel(
                    "Connections",
                    [
                        Q(f"sum(mailjournal_ingest_open_connections{{{s}}})", "open"),
                        Q(
                            rate("mailjournal_ingest_connections_total", s, "listener"),
                            "accepted/s {{listener}}",
                        ),
                    ],
                    description="SMTP connections open now, and accepted per second.",
                ),
                Panel(
                    "Bytes received",
                    [
                        Q(
                            rate("mailjournal_ingest_received_bytes_total", s, "listener"),
                            "{{listener}}",
                        )
                    ],
                    unit="Bps",
                    description="DATA bytes received per second.",
                ),
                Panel(
                    "Message size",
                    quantiles("mailjournal_ingest_message_size_bytes", s),
                    unit="bytes",
                    description="Size of accepted messages.",
                ),
            ],
        ),
        Row(
            "Kafka",
            [
                Panel(
                    "Kafka acknowledgement latency",
                    quantiles("mailjournal_ingest_kafka_ack_seconds", s),
                    unit="s",
                    width=8,
                    description="From produce to the delivery report (acks=all). Every DATA "
                    "waits for it before the 250.",
                ),
                Panel(
                    "Event-loop lag (p99)",
                    [
                        Q(quantile(0.99, "mailjournal_ingest_event_loop_lag_seconds", s), "lag"),
                        Q(
                            quantile(0.99, "mailjournal_ingest_event_loop_busy_lag_seconds", s),
                            "of it busy on CPU",
                        ),
                    ],
                    unit="s",
                    width=8,
                    description="How late the workers' event loops run a 50 ms timer, and the "
                    "part of it the loop spent on its own work; the rest is waiting for a CPU.",
                ),
                Panel(
                    "In flight",
                    [
                        Q(f"sum(mailjournal_ingest_inflight_messages{{{s}}})", "messages"),
                        Q(f"sum(mailjournal_ingest_inflight_bytes{{{s}}})", "bytes"),
                    ],
                    width=8,
                    description="Messages (and their bytes) between DATA and the final reply.",
                ),
                Panel(
                    "Producer queue",
                    [
                        Q(
                            f"sum by (instance) (mailjournal_kafka_producer_queue_messages{{{s}}})",
                            "{{instance}}",
                        )
                    ],
                    width=8,
                    description="Records in librdkafka's queue not yet acknowledged by Kafka.",
                ),
                Panel(
                    "Producer queue bytes",
                    [
                        Q(
                            f"sum by (instance) (mailjournal_kafka_producer_queue_bytes{{{s}}})",
                            "{{instance}}",
                        )
                    ],
                    unit="bytes",
                    width=8,
                    description="Bytes of those records (bounded by queue.buffering.max.kbytes).",
                ),
                Panel(
                    "Brokers connected",
                    [
                        Q(
                            f"min by (instance) (mailjournal_kafka_brokers_up{{{s}}})",
                            "{{instance}}",
                        )
                    ],
                    width=8,
                    description="Brokers the producer has an open connection to.",
                ),
            ],
        ),
    ]
    return dashboard(
        "mailjournal-ingest",
        "mailjournal / Ingest",
        "The SMTP ingest stage: accepted and refused mail, connections, Kafka acknowledgements.",
        rows,
        "ingest",
    )


def journal() -> Any:
    s = sel("journal")
    rows = [
        Row(
            "Decisions",
            [
                Panel(
                    "Messages decided by outcome",
                    [
                        Q(
                            rate("mailjournal_journal_messages_decided_total", s, "outcome"),
                            "{{outcome}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Message events: journaled, skipped (no copy owed) or "
                    "dead-lettered.",
                ),
                Panel(
                    "Journal copies emitted",
                    [
                        Q(
                            rate(
                                "mailjournal_journal_copies_emitted_total",
                                s,
                                "direction, source",
                            ),
                            "{{direction}} {{source}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Copies by direction and source (global or per-recipient).",
                ),
                Panel(
                    "Skipped messages by reason",
                    [Q(rate("mailjournal_journal_skips_total", s, "reason"), "{{reason}}")],
                    unit="ops",
                    stack=True,
                    description="Messages owing no copy: loop prevention (stamped, own_ndr, "
                    "journal_recipients_only) or nothing configured for them.",
                ),
                Panel(
                    "Protected recipients, invalid journal addresses, dead letters",
                    [
                        Q(
                            rate("mailjournal_journal_protected_recipients_total", s),
                            "protected recipients",
                        ),
                        Q(
                            rate(
                                "mailjournal_journal_invalid_journal_addresses_total",
                                s,
                                "direction",
                            ),
                            "invalid journal address {{direction}}",
                        ),
                        Q(
                            rate("mailjournal_journal_dead_letters_total", s, "reason"),
                            "dead letter {{reason}}",
                        ),
                    ],
                    unit="ops",
                    description="Recipients that are journal/NDR addresses (never journaled), "
                    "directory values that are not addresses, records dead-lettered.",
                ),
            ],
        ),
        Row(
            "Directory",
            [
                Panel(
                    "Directory lookups by result",
                    [
                        Q(
                            rate(
                                "mailjournal_journal_directory_lookups_total",
                                s,
                                "backend, result",
                            ),
                            "{{backend}} {{result}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Per-recipient journal address lookups: cache hits, found, "
                    "not found, errors.",
                ),
                Panel(
                    "Directory lookup latency",
                    quantiles(
                        "mailjournal_journal_directory_lookup_seconds",
                        s,
                        "backend",
                        "{{backend}}",
                    ),
                    unit="s",
                    description="Lookups that reached the backend (LDAP or file).",
                ),
                Panel(
                    "Directory availability",
                    [
                        Q(
                            f"min by (instance) (mailjournal_journal_directory_available{{{s}}})",
                            "available {{instance}}",
                        ),
                        Q(
                            rate("mailjournal_journal_directory_outage_seconds_total", s),
                            "stalled (s/s)",
                        ),
                        Q(
                            rate("mailjournal_journal_directory_reloads_total", s, "result"),
                            "file reloads {{result}}",
                        ),
                    ],
                    description="0 while a worker waits for the directory to come back; the "
                    "share of time spent waiting; reloads of a file directory.",
                ),
            ],
        ),
        Row(
            "Kafka",
            [
                Panel(
                    "Consumer lag by partition",
                    [
                        Q(
                            f"sum by (topic, partition) (mailjournal_kafka_consumer_lag{{{s}}})",
                            "{{topic}} [{{partition}}]",
                        )
                    ],
                    description="Message events not yet read, per partition of the messages topic.",
                ),
                Panel(
                    "Transactions",
                    [
                        Q(
                            rate("mailjournal_journal_transactions_total", s, "result"),
                            "{{result}}",
                        ),
                        Q(rate("mailjournal_journal_kafka_errors_total", s, "kind"), "{{kind}}"),
                    ],
                    unit="ops",
                    description="Kafka transactions committed or aborted, and Kafka errors by "
                    "class.",
                ),
                Panel(
                    "Transaction commit latency",
                    quantiles("mailjournal_journal_transaction_commit_seconds", s),
                    unit="s",
                    description="send_offsets_to_transaction + commit_transaction.",
                ),
                Panel(
                    "Batch size",
                    quantiles("mailjournal_journal_batch_messages", s),
                    description="Message events per committed transaction.",
                ),
            ],
        ),
    ]
    return dashboard(
        "mailjournal-journal",
        "mailjournal / Journal worker",
        "The journal worker: decisions, journal copies, the directory, Kafka transactions.",
        rows,
        "journal",
    )


def delivery() -> Any:
    s = sel("delivery")
    rows = [
        Row(
            "Delivery",
            [
                Panel(
                    "Attempts by kind and result",
                    [
                        Q(
                            rate("mailjournal_delivery_attempts_total", s, "kind, result"),
                            "{{kind}} {{result}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="SMTP attempts at the smart host by kind of copy (journal, "
                    "ndr) and reply class: delivered (2xx), transient (4xx), permanent (5xx).",
                ),
                Panel(
                    "Outcomes by kind and status",
                    [
                        Q(
                            rate("mailjournal_delivery_outcomes_total", s, "kind, status"),
                            "{{kind}} {{status}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Outcome events: delivered, retrying, ndr_sent, dead_lettered.",
                ),
                Panel(
                    "SMTP transaction latency",
                    quantiles("mailjournal_delivery_smtp_seconds", s),
                    unit="s",
                    description="MAIL FROM to the reply after DATA, per copy.",
                ),
                Panel(
                    "Accepted to delivered",
                    quantiles("mailjournal_delivery_end_to_end_seconds", s, "kind", "{{kind}}"),
                    unit="s",
                    description="From ingest's 250 to the smart host's 250 (retries included).",
                ),
            ],
        ),
        Row(
            "Retries, NDRs, dead letters",
            [
                Panel(
                    "Copies waiting for retry by tier",
                    [
                        Q(
                            f"sum by (tier) (mailjournal_delivery_retry_waiting{{{s}}})",
                            "tier {{tier}}",
                        )
                    ],
                    description="Journal copies on the retry tier topics, not yet due or not "
                    "yet retried.",
                ),
                Panel(
                    "Retries scheduled by tier",
                    [
                        Q(
                            rate("mailjournal_delivery_retries_scheduled_total", s, "tier"),
                            "tier {{tier}}",
                        )
                    ],
                    unit="ops",
                    description="Copies re-queued after a transient failure.",
                ),
                Panel(
                    "NDRs by direction and reason",
                    [
                        Q(
                            rate("mailjournal_delivery_ndrs_total", s, "direction, reason"),
                            "{{direction}} {{reason}}",
                        )
                    ],
                    unit="ops",
                    description="Journal copies that failed permanently or expired; the NDR "
                    "goes to the direction's NDR address.",
                ),
                Panel(
                    "Dead letters by reason",
                    [
                        Q(
                            rate("mailjournal_delivery_dead_letters_total", s, "reason"),
                            "{{reason}}",
                        )
                    ],
                    unit="ops",
                    description="Records on the dead-letter topic: NDRs that failed or expired, "
                    "copies without an NDR address, undecodable records.",
                ),
            ],
        ),
        Row(
            "SMTP sessions and Kafka",
            [
                Panel(
                    "SMTP connections to the smart host",
                    [
                        Q(f"sum(mailjournal_delivery_smtp_connections{{{s}}})", "open"),
                        Q(
                            rate("mailjournal_delivery_smtp_connects_total", s, "result"),
                            "connects/s {{result}}",
                        ),
                    ],
                    description="Open (reused) sessions, and new connections by result.",
                ),
                Panel(
                    "In flight by source",
                    [
                        Q(
                            f"sum by (source) (mailjournal_delivery_inflight{{{s}}})",
                            "{{source}}",
                        )
                    ],
                    description="Records consumed whose outcome is not yet durable.",
                ),
                Panel(
                    "Consumer lag by topic",
                    [
                        Q(
                            f"sum by (topic) (mailjournal_kafka_consumer_lag{{{s}}})",
                            "{{topic}}",
                        )
                    ],
                    description="Journal copies not yet read: the journal topic and each retry "
                    "tier (tiers hold copies until they are due).",
                ),
                Panel(
                    "Offset commits",
                    [Q(rate("mailjournal_delivery_commits_total", s, "result"), "{{result}}")],
                    unit="ops",
                    description="Offset commits by result.",
                ),
            ],
        ),
        Row(
            "Routes",
            [
                Panel(
                    "Attempts by route and result",
                    [
                        Q(
                            rate("mailjournal_delivery_route_attempts_total", s, "route, result"),
                            "{{route}} {{result}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Attempts per route (delivery.routes; the smart host is "
                    "'default'): delivered, transient, permanent; deferred: not attempted, the "
                    "route's sessions and waiters were full (back on the first retry tier).",
                ),
                Panel(
                    "Queued and in flight by route",
                    [
                        Q(
                            f"sum by (route) (mailjournal_delivery_route_queued{{{s}}})",
                            "{{route}} queued",
                        ),
                        Q(
                            f"sum by (route) (mailjournal_delivery_route_inflight{{{s}}})",
                            "{{route}} in flight",
                        ),
                    ],
                    description="Copies waiting for a session of the route, and in a "
                    "transaction on it: a slow or down archive fills its own route only.",
                ),
                Panel(
                    "TLS failures by route",
                    [
                        Q(
                            rate("mailjournal_delivery_route_tls_failures_total", s, "route"),
                            "{{route}}",
                        )
                    ],
                    unit="ops",
                    description="Sessions that failed in STARTTLS: not offered where required, "
                    "handshake, certificate verification, a pinned fingerprint that does not "
                    "match.",
                ),
            ],
        ),
    ]
    return dashboard(
        "mailjournal-delivery",
        "mailjournal / Delivery",
        "The delivery stage: attempts at the smart host, retries, NDRs, dead letters, sessions.",
        rows,
        "delivery",
    )


def relay() -> Any:
    s = sel("relay")
    rows = [
        Row(
            "Relay",
            [
                Panel(
                    "Originals by result",
                    [Q(rate("mailjournal_relay_messages_total", s, "result"), "{{result}}")],
                    unit="ops",
                    stack=True,
                    description="Relay transactions, one per next-hop route of an original: "
                    "delivered, partial (some recipients retried or given up), retrying, "
                    "ndr_sent (a DSN went to the sender), dead_lettered (nobody to tell); dsn_* "
                    "are the DSNs' own transactions.",
                ),
                Panel(
                    "Attempts at next hops by result",
                    [
                        Q(
                            rate(
                                "mailjournal_delivery_attempts_total",
                                sel("relay", 'kind="relay"'),
                                "result",
                            ),
                            "{{result}}",
                        )
                    ],
                    unit="ops",
                    stack=True,
                    description="Per recipient: delivered (2xx), transient (4xx, timeouts, "
                    "connection or DNS failures), permanent (5xx).",
                ),
                Panel(
                    "Accepted to the next hop's 250",
                    quantiles("mailjournal_relay_latency_seconds", s),
                    unit="s",
                    description="From ingest's 250 to the next hop's 250 for an original, "
                    "retries included (DSNs excluded).",
                ),
                Panel(
                    "SMTP transaction latency",
                    quantiles("mailjournal_delivery_smtp_seconds", s),
                    unit="s",
                    description="MAIL FROM to the reply after DATA, per next-hop transaction "
                    "(DSNs included).",
                ),
            ],
        ),
        Row(
            "Retries, DSNs, dead letters",
            [
                Panel(
                    "Originals waiting for retry by tier",
                    [
                        Q(
                            f"sum by (tier) (mailjournal_delivery_retry_waiting{{{s}}})",
                            "tier {{tier}}",
                        )
                    ],
                    description="Originals on the relay's retry tier topics, not yet due or not "
                    "yet retried.",
                ),
                Panel(
                    "Retries scheduled by tier",
                    [
                        Q(
                            rate("mailjournal_delivery_retries_scheduled_total", s, "tier"),
                            "tier {{tier}}",
                        )
                    ],
                    unit="ops",
                    description="Originals re-queued after a transient failure (only the "
                    "recipients still owed).",
                ),
                Panel(
                    "DSNs to senders by action",
                    [Q(rate("mailjournal_relay_dsns_total", s, "action"), "{{action}}")],
                    unit="ops",
                    description="RFC 3464 DSNs queued to original senders: failed (given up), "
                    "delayed (relay.delay_dsn).",
                ),
                Panel(
                    "Dead letters by reason",
                    [
                        Q(
                            rate("mailjournal_delivery_dead_letters_total", s, "reason"),
                            "{{reason}}",
                        )
                    ],
                    unit="ops",
                    description="Originals nobody could be told about (relay_null_sender, "
                    "relay_notify_never, relay_dsn_failed) and records the relay could not "
                    "process.",
                ),
            ],
        ),
        Row(
            "SMTP sessions and Kafka",
            [
                Panel(
                    "SMTP connections to next hops",
                    [
                        Q(f"sum(mailjournal_delivery_smtp_connections{{{s}}})", "open"),
                        Q(
                            rate("mailjournal_delivery_smtp_connects_total", s, "result"),
                            "connects/s {{result}}",
                        ),
                    ],
                    description="Open (reused) sessions, and new connections by result.",
                ),
                Panel(
                    "In flight by source",
                    [
                        Q(
                            f"sum by (source) (mailjournal_delivery_inflight{{{s}}})",
                            "{{source}}",
                        )
                    ],
                    description="Originals consumed (journal = from the messages topic, retry = "
                    "from a tier) whose outcome is not yet durable.",
                ),
                Panel(
                    "Consumer lag by topic",
                    [
                        Q(
                            f"sum by (topic) (mailjournal_kafka_consumer_lag{{{s}}})",
                            "{{topic}}",
                        )
                    ],
                    description="Records not yet read by the relay's group: the messages topic "
                    "and each retry tier (tiers hold originals until they are due).",
                ),
                Panel(
                    "Offset commits",
                    [Q(rate("mailjournal_delivery_commits_total", s, "result"), "{{result}}")],
                    unit="ops",
                    description="Offset commits by result.",
                ),
            ],
        ),
    ]
    return dashboard(
        "mailjournal-relay",
        "mailjournal / Relay",
        "The relay stage (inline mode): originals to their next hops, retries, DSNs to senders, "
        "dead letters, sessions.",
        rows,
        "relay",
    )


DASHBOARDS = {
    "mailjournal-overview.json": overview,
    "mailjournal-ingest.json": ingest,
    "mailjournal-journal.json": journal,
    "mailjournal-delivery.json": delivery,
    "mailjournal-relay.json": relay,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(OUT / name)


if __name__ == "__main__":
    main()
