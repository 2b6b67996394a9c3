"""Replays the fuzzer's committed corpus (``tests/fuzz/corpus``: seeds from
``tests/data/corpus``, hand-written attacks, and inputs the fuzzer found that once broke an
invariant) through the whole decide-and-build path of :mod:`tests.fuzz.harness`. No atheris
needed: the harness is plain Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import check

CORPUS = Path(__file__).parent / "fuzz" / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_file())


def test_the_corpus_is_there_and_small() -> None:
    assert 20 <= len(CASES) <= 100
    assert sum((CORPUS / c).stat().st_size for c in CASES) < 1_000_000


@pytest.mark.parametrize("name", CASES)
def test_corpus_input_keeps_every_invariant(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    accepted = check(data)
    # seeds and attacks were chosen so ingest takes them; fuzzer finds may be refused
    if name.startswith(("seed-", "attack-")):
        assert accepted, f"{name}: ingest refuses it, so it tests nothing past DATA"
