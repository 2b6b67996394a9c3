import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "/work/main")
import bench.run_all as ra
from bench.common import ProcSampler, smtp_sink, box_busy_seconds
from devtools.kafka_local import free_ports

class Both(ProcSampler):
    def report(self):
        out = super().report()
        for name, g in self.groups.items():
            out[name]["old_cpu_s"] = round(sum(max(0.0, g.last[p] - g.base.get(p, 0.0)) for p in g.last), 3)
        return out
ra.ProcSampler = Both
work = Path(tempfile.mkdtemp()); work.chmod(0o755)
(port,) = free_ports(1)
with smtp_sink(port) as sink:
    t = ra.PostfixTarget(port, sink.pid); t.start(work)
    try:
        ra.warm_up(t, 5, 20, 120)
        for size in (1024, 102400, 1048576):
            r = ra.run_point(t, size, 10, 20, 300)
            pf = r["groups"]["postfix"]
            tot_new = sum(g["cpu_s"] for g in r["groups"].values())
            print(size, "e2e", r["e2e_rate"], "postfix ms/msg new", round(pf["cpu_s"]/r["accepted"]*1000,2), "old", round(pf["old_cpu_s"]/r["accepted"]*1000,2), "box s", r["box_cpu_s"], "groups new s", round(tot_new,2), "note", r.get("note"), flush=True)
    finally:
        t.stop()
