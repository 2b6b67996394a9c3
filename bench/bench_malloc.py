"""What a freed message buffer costs when glibc hands its pages back to the kernel.

Each stage makes and frees a few large ``bytes`` per message (fastavro's copy of the original,
librdkafka's record, the report). Under glibc's defaults (trim and mmap thresholds of 128 KiB,
the mmap one raised only after a mapped block is freed) a 100 KB buffer's pages are returned on
free and faulted back in, zero-filled, on the next allocation. This prints the CPU and the minor
faults of one message's worth of such buffers (a copy into a ``bytearray`` and back to ``bytes``)
on a worker thread and on the main thread, with the process's allocator as started:

    .venv/bin/python bench/bench_malloc.py [SIZE] [COUNT]
    GLIBC_TUNABLES=glibc.malloc.trim_threshold=33554432:glibc.malloc.mmap_threshold=8388608 \\
        .venv/bin/python bench/bench_malloc.py

docs/performance.md ("100 KB per stage, and the freed buffers' page faults") has the figures and why the stages still run on the defaults.
"""

from __future__ import annotations

# Nothing else is imported, not even bench.common's cpu_seconds: whether a freed block faults
# depends on what else is on the heap, and importing bench.common (psutil) alone is enough to
# hide the effect (0 faults per message on glibc's defaults instead of 18).
import resource
import sys
import threading


def churn(size: int, count: int) -> None:
    src = b"x" * size
    for _ in range(count):
        a = bytearray(src)
        b = bytes(a)
        del a, b


def measure(size: int, count: int, on_thread: bool) -> tuple[float, float, float]:
    """(CPU µs, minor faults, kernel µs) per message; CPU is user + system, as cpu_seconds."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if on_thread:
        t = threading.Thread(target=churn, args=(size, count))
        t.start()
        t.join()
    else:
        churn(size, count)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return (
        cpu / count * 1e6,
        (r1.ru_minflt - r0.ru_minflt) / count,
        (r1.ru_stime - r0.ru_stime) / count * 1e6,
    )


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 102_400
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    churn(size, 100)  # the first messages may grow the heap
    print(f"{'where':8s} {'size':>9s} {'CPU us/msg':>11s} {'faults/msg':>11s} {'kernel us':>10s}")
    for where, on_thread in (("thread", True), ("main", False)):
        cpu, faults, kernel = measure(size, count, on_thread)
        print(f"{where:8s} {size:9d} {cpu:11.1f} {faults:11.1f} {kernel:10.1f}")


if __name__ == "__main__":
    main()
