"""Coverage-guided differential fuzzer of the native Avro decoder against fastavro.

    make fuzz-codec                # FUZZ_SECONDS=60 by default
    .venv/bin/python -m tests.fuzz.fuzz_codec WORK_DIR -max_total_time=60

The first octet of an input picks a kept schema version, the rest is a record body: both
decoders must read the same record over the same octets, or both refuse it (the native one
alone only for a refusal :mod:`schemas.native` documents; :func:`tests.avro_reference.check_decode`).
Coverage is Python's (the C is not instrumented): what guides the fuzzer is fastavro's paths and
the reference's, and every input still runs the C.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["schemas", "tests.avro_reference", "fastavro"]):
    from schemas import codec
    from tests.avro_reference import check_decode

CODEC = codec.default_codec()
ENTRIES = [e for n in CODEC.names() for e in CODEC.entries(n) if e.program is not None]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    check_decode(ENTRIES[data[0] % len(ENTRIES)], data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
