"""More than one global journal address per direction (``additional_addresses``): the journal
worker owes one copy to each, each NDR'd to the direction's NDR address; the audit requires
each; the replay's copies of the same decision (pure)."""

from __future__ import annotations

from journal_worker.decide import decide
from journal_worker.replay import SKIP_DIRECTION, ReplayRequest, replay_copies
from mailjournal.config import Config
from schemas import make_copy_id
from tests.fixtures.config import STAMP_KEY, make_config
from tests.fixtures.journal import make_event

J_IN, N_IN = "journal-in@corp.example", "journal-ndr-in@corp.example"
CLOUD = "journal@tenant.archive.example"


def fan_out_config() -> Config:
    return make_config({"journal": {"inbound": {"additional_addresses": [CLOUD, J_IN.upper()]}}})


def test_each_global_address_gets_its_own_copy_with_the_direction_ndr_address() -> None:
    config = fan_out_config()
    event = make_event("bob@example.net", ["alice@corp.example"])
    decision = decide(event, config, {}, STAMP_KEY)
    got = {(c.journal_address, c.ndr_address) for c in decision.copies}
    assert got == {(J_IN, N_IN), (CLOUD, N_IN)}  # the duplicate spelling counted once
    ids = {c.copy_id for c in decision.copies}
    assert ids == {make_copy_id(event["event_id"], J_IN), make_copy_id(event["event_id"], CLOUD)}


def test_the_audit_requires_every_global_address() -> None:
    from audit.reconcile import required_globals

    config = fan_out_config()
    event = make_event("bob@example.net", ["alice@corp.example"])
    assert required_globals(event, config) == {("INBOUND", J_IN), ("INBOUND", CLOUD)}


def test_replay_copies_get_run_ids_or_merge_to_one_address() -> None:
    config = fan_out_config()
    event = make_event("bob@example.net", ["alice@corp.example", "carl@corp.example"])
    decision = decide(event, config, {}, STAMP_KEY)
    policy = ReplayRequest(0, 1, run_id="r1")
    copies, why = replay_copies(decision, policy)
    assert why is None
    assert sorted(c.copy_id for c in copies) == sorted(
        c.copy_id + ".replay-r1" for c in decision.copies
    )
    merged, why = replay_copies(decision, ReplayRequest(0, 1, to="new@x.example", run_id="r2"))
    assert why is None and len(merged) == 1
    assert merged[0].journal_address == "new@x.example" and merged[0].ndr_address == N_IN
    assert merged[0].copy_id == make_copy_id(event["event_id"], "new@x.example") + ".replay-r2"
    assert {r.address for r in merged[0].recipients} == {"alice@corp.example", "carl@corp.example"}
    none, why = replay_copies(decision, ReplayRequest(0, 1, direction="outbound", run_id="r3"))
    assert none == () and why == SKIP_DIRECTION


def test_the_run_id_follows_from_the_arguments() -> None:
    a = ReplayRequest(1000, 2000, "inbound", "New@X.example")
    assert a.run == ReplayRequest(1000, 2000, "inbound", "new@x.example").run
    assert a.run != ReplayRequest(1000, 2001, "inbound", "new@x.example").run
    assert ReplayRequest(1000, 2000, run_id="mine").run == "mine"
