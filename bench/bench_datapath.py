"""CPU per MB of ingest's DATA read (:class:`ingest.datapath.DataParser`), by content.

``python -m bench.bench_datapath [--baseline REF]``: feeds 1 MB messages in 64 KiB reads (as the
server's protocol does) and prints the CPU time of one thread per message, for smtp-source's
19-octet lines (``make bench``), base64 (attachments) and 900-octet HTML lines. With
``--baseline`` the same is measured, in a subprocess, on the parser of ``git archive REF``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1 << 20
CHUNK = 64 * 1024
KINDS = ("smtp-source", "base64", "html")


def wires() -> dict[str, bytes]:
    """The three 1 MB DATA streams, made once so that a baseline measures the same bytes."""
    from bench.bench_compression import content  # here: a baseline's subprocess never needs it

    rng = random.Random(1)
    html = b"<p>" + b"x" * 894 + b"</p>\r\n"
    bodies = {
        "smtp-source": content("smtp-source", MB, rng),
        "base64": content("attachment", MB, rng),
        "html": html * (MB // len(html)),
    }
    # whole lines, then the terminator (a cut base64 line may end in a lone CR)
    return {k: v.rstrip(b"\r\n") + b"\r\n.\r\n" for k, v in bodies.items()}


def measure(inputs: Path, rounds: int) -> dict[str, float]:
    from ingest.datapath import DataParser, DataStatus

    out = {}
    for kind in KINDS:
        wire = (inputs / kind).read_bytes()
        chunks = [wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]
        started = time.thread_time()
        for _ in range(rounds):
            parser = DataParser(max_size=50 * MB)
            for chunk in chunks:
                parser.feed(chunk)
            assert parser.done and parser.status is DataStatus.OK
        out[kind] = (time.thread_time() - started) / rounds * 1000
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_datapath", description=__doc__)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--baseline", metavar="REF")
    ap.add_argument("--json", metavar="DIR", type=Path, help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.json, args.rounds)))
        return 0
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        for kind, wire in wires().items():
            (inputs / kind).write_bytes(wire)
        if args.baseline:
            from bench.run_all import git_tree

            tree = git_tree(args.baseline, Path(tmp) / "base")
            env = {**os.environ, "PYTHONPATH": str(tree)}
            # this file, run on the tree's parser (REF may predate it)
            done = subprocess.run(
                [sys.executable, __file__, "--json", str(inputs), "--rounds", str(args.rounds)],
                env=env,
                cwd=tree,
                check=True,
                capture_output=True,
                text=True,
            )
            rows[f"@{args.baseline}"] = json.loads(done.stdout)
        rows["this tree"] = measure(inputs, args.rounds)
    print("| parser | smtp-source lines ms/MB | base64 ms/MB | HTML lines ms/MB |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['smtp-source']:.2f} | {r['base64']:.2f} | {r['html']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
