"""One way for every stage to expose ``/metrics``, ``/healthz`` (liveness) and ``/readyz``.

A stage that runs several worker processes (``ingest --workers N``) sets up prometheus-client's
multiprocess mode: the parent calls :func:`prepare_multiprocess` before forking, every process
writes its samples to that directory, and the parent serves the merged view on the one port.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
)

import mailjournal

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# a Gauge, not an Info: Info is not supported in prometheus-client's multiprocess mode
BUILD_INFO = Gauge(
    "mailjournal_build_info",
    "Build of the running mailjournal",
    ["version"],
    multiprocess_mode="max",
)
BUILD_INFO.labels(version=mailjournal.__version__).set(1)
READY = Gauge(
    "mailjournal_ready", "1 when the stage is ready to do its work", multiprocess_mode="max"
)


class _Labelled(Protocol):
    def labels(self, *values: str) -> Any: ...


def children(metric: _Labelled) -> Callable[..., Any]:
    """``metric.labels``, each distinct tuple of label values looked up once.

    ``labels()`` validates, converts and locks on every call: about 2 µs, and a delivered copy
    took ten. Values must be few and hashable (the metric keeps a child per tuple anyway); a
    metric whose children are removed (``remove``/``clear``) must not be looked up this way."""
    return functools.cache(metric.labels)


def prepare_multiprocess(base: Path | None = None) -> Path:
    """Create a fresh multiprocess directory and point this process (and its children) at it.

    Must run before prometheus_client metrics are created in the workers."""
    path = Path(tempfile.mkdtemp(prefix="mailjournal-metrics-", dir=base))
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client picks its value class at import, before the variable was set: re-pick
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return path


def cleanup_multiprocess() -> None:
    path = os.environ.get(MULTIPROC_ENV)
    if path and Path(path).name.startswith("mailjournal-metrics-"):
        shutil.rmtree(path, ignore_errors=True)


def _registry() -> CollectorRegistry | None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return None  # the default registry


class MetricsServer:
    """HTTP server on its own thread: /metrics, /healthz, /readyz."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool] | None = None):
        self._ready = ready or (lambda: True)
        registry = _registry()
        ready_fn = self._ready
        if registry is None:  # single process: the gauge says what /readyz says
            READY.set_function(lambda: 1.0 if ready_fn() else 0.0)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import REGISTRY

                    body = generate_latest(registry or REGISTRY)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ok = ready_fn()
                    self._send(
                        200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain"
                    )
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    host: str, port: int, ready: Callable[[], bool] | None = None
) -> MetricsServer | None:
    """Start the endpoint; port 0 in the config means disabled (returns None)."""
    if port == 0:
        return None
    return MetricsServer(host, port, ready).start()
