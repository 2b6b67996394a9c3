"""Kafka requests per message, by API, from the broker's own request metrics.

``bench/KafkaRequests.java`` attaches to the broker's JVM (by pid, no JMX port) and prints the
``kafka.network:type=RequestMetrics,name=RequestsPerSec`` counts per API on every line it reads:
one JVM for the whole run, a snapshot before and after each measured point. It needs a JDK
(``java`` launching a source file needs ``jdk.compiler``); without one :class:`BrokerRequests`
says so once and the bench prints no request counts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

TOOL = Path(__file__).resolve().parent / "KafkaRequests.java"
# the controller's own traffic and the sub-counts of Fetch (FetchConsumer/FetchFollower): not
# requests a message causes, or counted twice
NOT_PER_MESSAGE = frozenset(
    {
        "BrokerHeartbeat",
        "BrokerRegistration",
        "ControllerRegistration",
        "FetchConsumer",
        "FetchFollower",
        "Vote",
        "BeginQuorumEpoch",
        "EndQuorumEpoch",
        "DescribeQuorum",
        "AllocateProducerIds",
    }
)


def per_message(
    before: Mapping[str, int], after: Mapping[str, int], messages: int
) -> dict[str, float]:
    """Requests per message by API over a window (most frequent first); pure."""
    if messages <= 0:
        return {}
    out = {
        api: (after[api] - before.get(api, 0)) / messages
        for api in after
        if api not in NOT_PER_MESSAGE and after[api] > before.get(api, 0)
    }
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(counts: Mapping[str, float], top: int = 4) -> str:
    """``"12.3 req/msg (Produce 4.1, Fetch 3.9, ...)"``; "-" when unknown."""
    if not counts:
        return "-"
    parts = ", ".join(f"{api} {n:.2f}" for api, n in list(counts.items())[:top])
    return f"{sum(counts.values()):.2f} ({parts})"


class BrokerRequests:
    """Snapshots of one broker's request counts per API."""

    def __init__(self, pid: int):
        self.pid = pid
        self._proc: subprocess.Popen[str] | None = None
        self._failed = False

    def snapshot(self) -> dict[str, int] | None:
        if self._failed:
            return None
        try:
            if self._proc is None:
                self._proc = subprocess.Popen(
                    ["java", str(TOOL), str(self.pid)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write("\n")
            self._proc.stdin.flush()
            counts: dict[str, int] = {}
            for line in self._proc.stdout:
                line = line.strip()
                if line == "END":
                    return counts
                api, _, count = line.partition(" ")
                counts[api] = int(count)
            raise OSError("the request-metrics tool exited")
        except (OSError, ValueError) as exc:
            err = ""
            if self._proc is not None and self._proc.stderr is not None:
                self._proc.kill()
                err = self._proc.stderr.read()[-500:]
            print(f"Kafka request metrics unavailable: {exc} {err}", file=sys.stderr)
            self._failed = True
            self._proc = None
            return None

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
