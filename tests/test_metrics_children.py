"""mailjournal.metrics.children: a labelled metric's children looked up once per label values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from mailjournal.metrics import children


def test_each_child_is_the_metrics_own_and_counts_land_in_it() -> None:
    registry = CollectorRegistry()
    attempts = Counter("t_attempts_total", "t", ["kind", "result"], registry=registry)
    inflight = Gauge("t_inflight", "t", ["source"], registry=registry)
    attempt, waiting = children(attempts), children(inflight)
    for _ in range(3):
        attempt("journal", "delivered").inc()
    attempt("ndr", "transient").inc()
    waiting("input").inc()
    waiting("input").dec()
    waiting("retry").inc()
    assert attempt("journal", "delivered") is attempts.labels("journal", "delivered")
    value = registry.get_sample_value
    assert value("t_attempts_total", {"kind": "journal", "result": "delivered"}) == 3
    assert value("t_attempts_total", {"kind": "ndr", "result": "transient"}) == 1
    assert value("t_inflight", {"source": "input"}) == 0
    assert value("t_inflight", {"source": "retry"}) == 1
