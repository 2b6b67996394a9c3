"""The sampler A/B of 2026-12-06: Postfix's CPU per message by the old and the new formula.

One Postfix target (``bench.run_all``'s ``PostfixTarget`` and ``run_point``, 10 s per point); the
CPU of Postfix's process group computed both ways over the same samples: "old" is each pid's own
last sample minus its first (the sampler before 89a8bfe), "new" is ``window_cpu`` (a daemon
reaped by the master counted once, through the master). Output: ``sampler-ab-20261206.txt``.

    .venv/bin/python docs/bench-results/sampler-ab-20261206.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bench.run_all as ra
from bench.common import ProcSampler, smtp_sink
from devtools.kafka_local import free_ports


class BothFormulas(ProcSampler):
    def report(self) -> dict[str, dict[str, float]]:
        out = super().report()
        for name, g in self.groups.items():
            old = sum(max(0.0, g.last[p] - g.base.get(p, 0.0)) for p in g.last)
            out[name]["old_cpu_s"] = round(old, 3)
        return out


def main() -> None:
    ra.ProcSampler = BothFormulas  # type: ignore[misc]
    work = Path(tempfile.mkdtemp())
    work.chmod(0o755)  # Postfix's daemons run as user postfix
    (port,) = free_ports(1)
    with smtp_sink(port) as sink:
        target = ra.PostfixTarget(port, sink.pid)
        target.start(work)
        try:
            ra.warm_up(target, 5, 20, 120)
            for size in (1024, 102400, 1048576):
                row: dict[str, Any] = ra.run_point(target, size, 10, 20, 300)
                pf = row["groups"]["postfix"]
                per = 1000 / row["accepted"]
                groups = sum(g["cpu_s"] for g in row["groups"].values())
                print(
                    f"{size} e2e {row['e2e_rate']} postfix ms/msg new {pf['cpu_s'] * per:.2f} "
                    f"old {pf['old_cpu_s'] * per:.2f} box s {row['box_cpu_s']} "
                    f"groups new s {groups:.2f} note {row.get('note')}",
                    flush=True,
                )
        finally:
            target.stop()


if __name__ == "__main__":
    main()
