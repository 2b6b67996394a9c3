"""Coverage-guided fuzzer (atheris, libFuzzer) over the whole decide-and-build path.

    make fuzz                      # FUZZ_SECONDS=60 by default
    .venv/bin/python -m tests.fuzz.fuzz_pipeline WORK_DIR tests/fuzz/corpus -max_total_time=60

Each input is raw message bytes; :func:`tests.fuzz.harness.check` runs them through ingest's
DATA reader and header extraction, the journal worker's decision and delivery's builders, and
raises on any exception or broken invariant (libFuzzer then writes the input as a crash file).
New interesting inputs go to the first corpus directory (a work directory, so the committed
corpus stays small); ``tests/fuzz/corpus`` is read as seeds and replayed by
``tests/test_fuzz_corpus.py`` in ``make test``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(
    include=["ingest", "journal_worker", "delivery", "mailjournal", "schemas", "email"]
):
    import email.utils  # noqa: F401  (instrumented: the header parsers are the target)
    from email import _header_value_parser, header, headerregistry  # noqa: F401

    from tests.fuzz import harness


def test_one_input(data: bytes) -> None:
    harness.check(data, every_envelope=False)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
