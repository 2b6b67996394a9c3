"""Times on the command line (``audit --since``, ``replay --since/--until``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def parse_time(value: str | None) -> int | None:
    """ISO 8601 time, or a relative age such as ``2h``, ``30m``, ``1d``; as epoch milliseconds."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return int((time.time() - float(value[:-1]) * units[value[-1]]) * 1000)
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time (for reports)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
