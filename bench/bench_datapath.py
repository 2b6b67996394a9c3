"""CPU per MB of ingest's DATA read (:class:`ingest.datapath.DataParser`), by content.

``python -m bench.bench_datapath [--baseline REF]``: feeds 1 MB messages in 64 KiB reads (as the
server's protocol does) and prints the CPU time of one thread per message, for smtp-source's
19-octet lines (``make bench``), base64 (attachments) and 900-octet HTML lines. With
``--baseline`` the same is measured, in a subprocess, on the parser of ``git archive REF``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1 << 20
CHUNK = 64 * 1024


def content(kind: str) -> bytes:
    if kind == "smtp-source":
        body = b"La de da de da 1.\r\n" * (MB // 19)
    elif kind == "base64":
        body = base64.encodebytes(os.urandom(MB * 3 // 4)).replace(b"\n", b"\r\n")
    else:
        body = (b"<p>" + b"x" * 894 + b"</p>\r\n") * (MB // 903)
    return body + b".\r\n"


def measure(rounds: int) -> dict[str, float]:
    from ingest.datapath import DataParser, DataStatus

    out = {}
    for kind in ("smtp-source", "base64", "html"):
        wire = content(kind)
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
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.rounds)))
        return 0
    rows = {}
    if args.baseline:
        from bench.run_all import git_tree

        with tempfile.TemporaryDirectory() as tmp:
            tree = git_tree(args.baseline, Path(tmp) / "base")
            env = {**os.environ, "PYTHONPATH": str(tree)}
            # this file, run on the tree's parser (REF may predate it)
            done = subprocess.run(
                [sys.executable, __file__, "--json", "--rounds", str(args.rounds)],
                env=env,
                cwd=tree,
                check=True,
                capture_output=True,
                text=True,
            )
            rows[f"@{args.baseline}"] = json.loads(done.stdout)
    rows["this tree"] = measure(args.rounds)
    print("| parser | smtp-source lines ms/MB | base64 ms/MB | HTML lines ms/MB |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['smtp-source']:.2f} | {r['base64']:.2f} | {r['html']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
