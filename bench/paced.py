"""Sustainable rate: paced load stepping up until mailjournal's end-to-end p99 exceeds 1 s.

    .venv/bin/python -m bench.paced [--rates 50,100,200,300,400,600] [--seconds 20] [--size 1024]
                                    [--quick] [--target mailjournal|postfix]

A paced client: every ``--tick`` seconds one ``smtp-source`` burst of ``rate * tick`` messages (up
to 20 sessions) is started without waiting for the previous one, so the offered load does not slow
down when the target does (an open-loop generator, unlike ``make bench``'s closed loop). Each step
reports offered and end-to-end rates and latency p50/p95/p99 (outcomes topic for mailjournal, the
log's ``delay=`` for Postfix). The knee is the highest step whose p99 stays under 1 s and whose
deliveries kept up; the issue's goal is p99 < 1 s at half of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    fmt,
    latency_summary,
    markdown_table,
    missing_tools,
    smtp_sink,
    source_argv,
    wait_for,
)
from bench.run_all import MailjournalTarget, PostfixTarget, Target, _ms, overrides_from


def paced_step(
    target: Target, rate: float, seconds: float, size: int, tick: float, drain: float
) -> dict[str, Any]:
    mark = target.mark()
    per_tick = rate * tick
    owed = 0.0
    procs: list[subprocess.Popen[bytes]] = []
    sent = 0
    t0 = time.monotonic()
    next_tick = t0
    while next_tick < t0 + seconds:
        owed += per_tick
        n = int(owed)
        owed -= n
        if n:
            argv = source_argv(target.port, size, n, min(20, n))
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            sent += n
        procs = [p for p in procs if p.poll() is None]
        next_tick += tick
        time.sleep(max(0.0, next_tick - time.monotonic()))
    for p in procs:
        p.wait(300)
    offered_s = time.monotonic() - t0
    accepted = target.accepted(mark, sent)
    kept_up = wait_for(lambda: target.delivered(mark) >= accepted, drain, 0.1)
    e2e_s = time.monotonic() - t0
    lat = latency_summary(target.latencies(mark))
    return {
        "rate": rate,
        "sent": sent,
        "accepted": accepted,
        "offered_rate": round(sent / offered_s, 1),
        "e2e_rate": round(target.delivered(mark) / e2e_s, 1),
        "drained_within_s": round(e2e_s - offered_s, 2),
        "kept_up": kept_up,
        "latency": lat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.paced", description=__doc__)
    ap.add_argument("--rates", default="50,100,200,300,400,500,600")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tick", type=float, default=0.25)
    ap.add_argument("--target", choices=["mailjournal", "postfix"], default="mailjournal")
    ap.add_argument("--ingest-workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    ap.add_argument("--quick", action="store_true", help="3 s per step, rates 50,200")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    rates = [float(r) for r in ("50,200" if args.quick else args.rates).split(",")]
    seconds = 3.0 if args.quick else args.seconds
    if missing_tools():
        print(f"missing {missing_tools()}: install the Debian package postfix", file=sys.stderr)
        return 2
    from devtools.kafka_local import KafkaLocal, free_ports

    work = Path(tempfile.mkdtemp(prefix="mailjournal-paced-"))
    work.chmod(0o755)
    kafka: KafkaLocal | None = None
    target: Target | None = None
    steps: list[dict[str, Any]] = []
    try:
        (sink_port,) = free_ports(1)
        with smtp_sink(sink_port) as sink:
            if args.target == "postfix":
                target = PostfixTarget(sink_port, sink.pid)
            else:
                kafka = KafkaLocal(work / "kafka", brokers=1, die_with_parent=True)
                bootstrap = kafka.up()
                target = MailjournalTarget(
                    sink_port,
                    sink.pid,
                    name="mailjournal",
                    bootstrap=bootstrap,
                    kafka_pid=kafka.brokers[min(kafka.brokers)].pid,
                    ingest_workers=args.ingest_workers,
                    overrides=overrides_from(args.set),
                )
            target.start(work)
            paced_step(target, rates[0], min(2.0, seconds), args.size, args.tick, 60)  # warm-up
            for rate in rates:
                step = paced_step(target, rate, seconds, args.size, args.tick, 60)
                steps.append(step)
                lat = step["latency"]
                print(
                    f"{rate:7.0f}/s offered {step['offered_rate']:7.1f}/s e2e "
                    f"{step['e2e_rate']:7.1f}/s p50 {fmt(_ms(lat['p50_s']))} p99 "
                    f"{fmt(_ms(lat['p99_s']))} ms kept up: {step['kept_up']}",
                    flush=True,
                )
                if not step["kept_up"] or (lat["p99_s"] or 0) > 1.0:
                    break
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if target is not None:
            with contextlib.suppress(Exception):
                target.stop()
        if kafka is not None:
            kafka.down()
        shutil.rmtree(work, ignore_errors=True)
    good = [s for s in steps if s["kept_up"] and (s["latency"]["p99_s"] or 0) <= 1.0]
    knee = max((s["rate"] for s in good), default=None)
    half = [s for s in steps if knee and s["rate"] <= knee / 2]
    rows = [
        [
            fmt(s["rate"]),
            fmt(s["offered_rate"]),
            fmt(s["e2e_rate"]),
            fmt(_ms(s["latency"]["p50_s"])),
            fmt(_ms(s["latency"]["p95_s"])),
            fmt(_ms(s["latency"]["p99_s"])),
            "yes" if s["kept_up"] else "no",
        ]
        for s in steps
    ]
    md = markdown_table(
        ["target msgs/s", "offered/s", "e2e/s", "p50 ms", "p95 ms", "p99 ms", "kept up"], rows
    )
    print(
        f"\n{md}\n\nknee (p99 <= 1 s, kept up): {fmt(knee)} msgs/s ({args.target}, {args.size} B)"
    )
    if half:
        print(f"p99 at <= half the knee: {fmt(_ms(half[-1]['latency']['p99_s']))} ms")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"paced-{args.target}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(
        json.dumps({"size": args.size, "steps": steps, "knee": knee}, indent=2)
    )
    stem.with_suffix(".md").write_text(md + f"\n\nknee: {knee}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
