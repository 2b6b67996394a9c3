"""A CPU profile of every stage under ``run_all``'s load, by the Python function that was running.

py-spy samples a stage's threads by their state, so a thread that waits for the GIL or for a
core counts as busy (``--gil`` instead follows the GIL holder, which is often descheduled): on a
2-core box running the whole pipeline, both views are mostly scheduling. ``perf`` samples what a
core actually runs. With Python 3.12's perf trampolines (``PYTHONPERFSUPPORT=1``) each Python
frame shows up in the native stack as ``py::<function>:<file>``, so every CPU sample is charged
to the innermost Python function on the stack, its native callees included (a hash, a socket
call, the kernel work of that call). Samples with no Python frame are the kernel's own work
(interrupts, the network's receive path, scheduling) or a native thread (librdkafka's).

Needs Python >= 3.12 (the trampolines) and ``perf``. The project's venv may be older; one way:

    ~/.pyenv/versions/3.12.1/bin/python3.12 -m venv /tmp/v312
    /tmp/v312/bin/pip install -e '.[dev,bench]'
    /tmp/v312/bin/python -m bench.perf_profile --size 102400 --seconds 15

It runs ``bench.run_all --targets '' --relay --sizes SIZE`` (journal + relay, the same load as
``make bench``), waits until smtp-source sends SIZE-octet messages, records each stage for
``--seconds`` (DWARF unwinding: the interpreter has no frame pointers) and prints, per stage,
where its samples fell. The figures are shares of a stage's own samples; run_all's table gives
the CPU per message they divide.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# how each stage's process is found (``ps`` command lines): ingest's workers are spawned
STAGES = {
    "delivery": r"mailjournal deliver --config",
    "relay": r"mailjournal relay --config",
    "journal": r"mailjournal journal --config",
    "ingest-main": r"mailjournal ingest --config",
    "ingest-worker": r"multiprocessing\.spawn",
}
_PY_FRAME = re.compile(r"py::(\S+)")
_DSO = re.compile(r"\(([^()]*)\)\s*$")


@dataclass
class Profile:
    """The samples of one process, charged to the innermost Python frame of each."""

    samples: int = 0
    by_function: Counter[str] = field(default_factory=Counter)
    by_leaf: Counter[str] = field(default_factory=Counter)

    def add(self, frames: list[str]) -> None:
        """One sample's stack, innermost frame first (``perf script`` lines)."""
        if not frames:
            return
        self.samples += 1
        leaf = leaf_object(frames)
        self.by_leaf[leaf] += 1
        for frame in frames:
            py = _PY_FRAME.search(frame)
            if py:
                name, _, where = py.group(1).partition(":")
                self.by_function[f"{name} ({short_path(where)})"] += 1
                return
        self.by_function[f"<no Python frame: {leaf}>"] += 1


def leaf_object(frames: list[str]) -> str:
    """The binary the sample's innermost frame runs in: a function inlined into its caller is
    printed as ``(inlined)``, and its binary is that of the first frame that is not."""
    for frame in frames:
        m = _DSO.search(frame)
        if m and m.group(1) != "inlined":
            return Path(m.group(1)).name
    return "?"


def short_path(where: str) -> str:
    """``/work/main/ingest/server.py+0x5`` -> ``ingest/server.py``; the stdlib and site-packages
    keep their last two parts."""
    path = where.rsplit("+", 1)[0]
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return "/".join(Path(path).parts[-2:])


def samples(lines: Iterable[str]) -> Iterator[list[str]]:
    """The stacks of ``perf script`` output: header line, then one indented line per frame,
    then a blank line."""
    frames: list[str] = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line[:1] in (" ", "\t"):
            frames.append(line.strip())
    if frames:
        yield frames


def profile_of(lines: Iterable[str]) -> Profile:
    p = Profile()
    for frames in samples(lines):
        p.add(frames)
    return p


def report(name: str, p: Profile, top: int) -> str:
    if not p.samples:
        return f"## {name}: no samples\n"
    out = [f"## {name}: {p.samples} samples", "", "| leaf | share |", "|---|---|"]
    out += [f"| {k} | {100 * n / p.samples:.1f} % |" for k, n in p.by_leaf.most_common(6)]
    out += ["", "| innermost Python function (its native callees included) | share |", "|---|---|"]
    out += [f"| `{k}` | {100 * n / p.samples:.1f} % |" for k, n in p.by_function.most_common(top)]
    return "\n".join(out) + "\n"


def pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(x) for x in found.split()]


def wait_for_load(size: int, deadline: float) -> None:
    """Until smtp-source sends ``size``-octet messages (run_all's point of that size)."""
    while time.monotonic() < deadline:
        ps = subprocess.run(["pgrep", "-af", "smtp-source"], capture_output=True, text=True)
        if any(f"-l {size}" in line for line in ps.stdout.splitlines()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no smtp-source sending {size} octets")


def record(out: Path, size: int, seconds: float, settle: float) -> dict[str, list[Path]]:
    wait_for_load(size, time.monotonic() + 600)
    time.sleep(settle)  # past the point's ramp-up
    recorders: list[subprocess.Popen[bytes]] = []
    files: dict[str, list[Path]] = {}
    for stage, pattern in STAGES.items():
        for i, pid in enumerate(pids(pattern)):
            data = out / f"{stage}-{i}.data"
            files.setdefault(stage, []).append(data)
            cmd = ["perf", "record", "-q", "-F", "249", "--call-graph", "dwarf,16384"]
            cmd += ["-p", str(pid), "-o", str(data), "--", "sleep", str(seconds)]
            recorders.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    for r in recorders:
        r.wait()
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=102400)
    ap.add_argument("--seconds", type=float, default=15.0, help="recorded per stage")
    ap.add_argument("--settle", type=float, default=5.0, help="wait into the point first")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="keep perf data and run_all's results here")
    args = ap.parse_args(argv)
    if sys.version_info < (3, 12):
        print("perf_profile: needs Python >= 3.12 (perf trampolines); see the module's doc")
        return 2
    if shutil.which("perf") is None:
        print("perf_profile: perf is not installed (Debian: linux-perf)")
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="perf-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    point = max(args.seconds + args.settle + 15, 30)
    bench = [sys.executable, "-m", "bench.run_all", "--targets", "", "--relay"]
    bench += ["--sizes", str(args.size), "--seconds", str(int(point)), "--out", str(out)]
    env = {**os.environ, "PYTHONPERFSUPPORT": "1"}
    with open(out / "run_all.log", "wb") as log:
        run = subprocess.Popen(bench, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            files = record(out, args.size, args.seconds, args.settle)
        finally:
            rc = run.wait()
    if rc != 0:
        print(f"perf_profile: run_all failed ({rc}), see {out / 'run_all.log'}")
        return 1
    print(f"# CPU profile per stage, {args.size} octets, {args.seconds:g} s each (data in {out})\n")
    for stage, datas in files.items():
        for i, data in enumerate(datas):
            script = subprocess.run(
                ["perf", "script", "-i", str(data)], capture_output=True, text=True
            ).stdout
            name = stage if len(datas) == 1 else f"{stage} {i + 1}"
            print(report(name, profile_of(script.splitlines()), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
