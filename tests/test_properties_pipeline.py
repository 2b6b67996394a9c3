"""The whole decide-and-build path against hostile raw messages (issue 13, hypothesis).

For every message ingest accepts (its own DATA reader and header extraction), through the journal
worker's decision and delivery's builders (:mod:`tests.fuzz.harness`): the decision holds the
global copy of each of the envelope's directions without falling back, every copy encodes, the
report, the copy, the NDR and the DSN build without a fallback, and the original is byte-exact
inside the report, the copy and the NDR."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import check
from tests.strategies import arbitrary_message, hostile_message

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(hostile_message())
def test_hostile_structured_fields_never_cost_a_copy(raw: bytes) -> None:
    assert check(raw), "ingest refused the message: the strategy must stay within its limits"


@SETTINGS
@given(st.one_of(arbitrary_message(), hostile_message().map(lambda m: m.replace(b"\r\n", b"\n"))))
def test_any_bytes_ingest_accepts_keep_every_invariant(raw: bytes) -> None:
    check(raw)  # refused ones return False; any accepted one must keep every invariant
