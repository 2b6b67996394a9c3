"""Receipts sealed into chains, signatures, checkpoints and the policy digest: pure logic, no
servers. Every tampering an auditor must see is detected and named."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evidence.canonical import GENESIS, canonical, record_hash
from evidence.chain import Chains
from evidence.keys import Keyring, SigningKey
from evidence.verify import Verdict, verify_chains
from mailjournal.policy import policy_digest, policy_document
from schemas import codec, records
from tests.fixtures.config import make_config

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
RING = Keyring.of([KEY.public])


def body(i: int) -> dict[str, Any]:
    copy_ = records.receipt_copy(
        copy_id=f"E{i:025d}.abcdef0123456789",
        journal_address="journal-in@corp.example",
        format="REPORT",
        directions=["INBOUND"],
        status="DELIVERED",
        last_reply="250 2.0.0 Ok: queued as 4XyZ12",
        delivered_to_host="127.0.0.1:2525",
        ndr_copy_id=None,
        attempts=1,
        final_at=1_700_000_000_000 + i,
        policy_digest="sha256:" + "ab" * 32,
    )
    return dict(
        records.journal_receipt(
            event_id=f"E{i:025d}",
            received_at=1_700_000_000_000 + i,
            message_sha256="ef" * 32,
            size=100 + i,
            mail_from="jürgen@extern.example",
            recipients=["user@corp.example"],
            client=records.receipt_client(
                ip="192.0.2.1",
                helo="mx.extern.example",
                auth_user=None,
                listener="mx",
                listener_role="INTERNET",
                tls=False,
                trusted=False,
            ),
            copies=[copy_],
            policy_digest="sha256:" + "ab" * 32,
        )
    )


def sealed(n: int, partitions: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` receipts over ``partitions`` chains and one checkpoint after them."""
    chains = Chains(KEY, partitions)
    out = [dict(chains.seal(body(i), i % partitions, 1_700_000_001_000 + i)) for i in range(n)]
    return out, [dict(chains.checkpoint(1_700_000_002_000, "sha256:" + "ab" * 32))]


def kinds(verdict: Verdict) -> set[str]:
    return {p.kind for p in verdict.problems}


def test_sealed_receipts_verify_and_link_to_genesis() -> None:
    receipts, cps = sealed(10)
    verdict = verify_chains(receipts, cps, RING)
    assert verdict.ok, verdict.render()
    assert verdict.receipts == 10 and verdict.partitions == 3 and verdict.checkpoints == 1
    assert verdict.key_ids == (KEY.key_id,)
    assert receipts[0]["seq"] == 0 and receipts[0]["prev_hash"] == GENESIS
    assert receipts[3]["seq"] == 1 and receipts[3]["prev_hash"] == record_hash(receipts[0])


def test_avro_round_trip_keeps_the_canonical_bytes() -> None:
    receipts, cps = sealed(4)
    for r in receipts:
        decoded = codec.decode(codec.encode("JournalReceipt", r), "JournalReceipt")
        assert canonical(decoded) == canonical(r)
    decoded_cp = codec.decode(codec.encode("JournalCheckpoint", cps[0]), "JournalCheckpoint")
    assert verify_chains(receipts, [decoded_cp], RING).ok


def _paths(record: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(record, dict):
        return [p for k, v in record.items() for p in _paths(v, (*prefix, k))]
    if isinstance(record, list):
        return [p for i, v in enumerate(record) for p in _paths(v, (*prefix, i))]
    return [prefix]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "x"
    return str(value) + "x"


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_changed_field_is_detected_and_named(data: st.DataObject) -> None:
    receipts, cps = sealed(9)
    i = data.draw(st.integers(0, len(receipts) - 1), label="receipt")
    paths = [p for p in _paths(receipts[i]) if p[0] != "signature"]
    path = data.draw(st.sampled_from(paths), label="field")
    node: Any = receipts[i]
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = _changed(node[path[-1]])
    verdict = verify_chains(receipts, cps, RING)
    assert not verdict.ok
    bad = [p for p in verdict.problems if p.kind == "bad-signature"]
    assert bad, verdict.render()
    if path[0] not in ("partition", "seq", "event_id"):  # those are the receipt's name
        assert f"message {receipts[i]['event_id']}" in bad[0].where


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 8))
def test_a_deleted_receipt_is_detected(i: int) -> None:
    receipts, cps = sealed(9)
    gone = receipts.pop(i)
    verdict = verify_chains(receipts, cps, RING)
    assert not verdict.ok
    last_of_chain = not any(
        r["partition"] == gone["partition"] and r["seq"] > gone["seq"] for r in receipts
    )
    if last_of_chain:  # only the checkpoint knows it existed
        assert kinds(verdict) == {"dropped"}, verdict.render()
    else:
        assert "missing" in kinds(verdict), verdict.render()
        assert any(f"seq {gone['seq']}" in p.detail for p in verdict.problems)


def test_a_window_starting_mid_chain_links_to_its_anchor() -> None:
    receipts, cps = sealed(9)
    since = receipts[3]["written_at"]
    window = [r for r in receipts if r["written_at"] >= since]
    anchors = {r["partition"]: r for r in receipts[:3]}
    assert verify_chains(window, cps, RING, since_ms=since, anchors=anchors).ok
    verdict = verify_chains(window, cps, RING, since_ms=since)  # no anchors: seq 0 lost
    assert kinds(verdict) == {"missing"}
    wrong = {0: receipts[1], 1: receipts[1], 2: receipts[2]}  # p0's anchor from another chain
    assert "broken-link" in kinds(verify_chains(window, cps, RING, since_ms=since, anchors=wrong))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_two_swapped_receipts_are_detected(data: st.DataObject) -> None:
    receipts, cps = sealed(12)
    partition = data.draw(st.integers(0, 2))
    idx = [k for k, r in enumerate(receipts) if r["partition"] == partition]
    a, b = sorted(data.draw(st.lists(st.sampled_from(idx), min_size=2, max_size=2, unique=True)))
    receipts[a], receipts[b] = receipts[b], receipts[a]
    verdict = verify_chains(receipts, cps, RING)
    assert "out-of-order" in kinds(verdict), verdict.render()


def test_swapping_receipts_of_different_partitions_changes_nothing() -> None:
    # one chain per partition: the order between chains is not evidence
    receipts, cps = sealed(6)
    receipts[0], receipts[1] = receipts[1], receipts[0]
    assert verify_chains(receipts, cps, RING).ok


def test_a_receipt_signed_with_another_key_is_named() -> None:
    receipts, cps = sealed(6)
    forged = OTHER.sign(receipts[2])  # the forger's own key id
    receipts[2] = forged
    problems = verify_chains(receipts, cps, RING).problems
    # named; and the next receipt of its chain no longer links to it (its hash changed)
    assert [p.kind for p in problems] == ["bad-signature", "broken-link"]
    assert f"message {receipts[2]['event_id']}" in problems[0].where
    assert "unknown key" in problems[0].detail and OTHER.key_id in problems[0].detail
    # the forger claims our key id: the signature does not verify under it
    claimed = {**forged, "key_id": KEY.key_id}
    receipts[2] = claimed
    problems = verify_chains(receipts, cps, RING).problems
    assert "bad signature" in problems[0].detail


def test_rotation_old_and_new_keys_verify_side_by_side() -> None:
    receipts, _ = sealed(3, partitions=1)
    chains = Chains(OTHER, 1)
    from evidence.chain import head_of

    chains.restore({0: head_of(receipts[-1])})
    receipts.append(dict(chains.seal(body(3), 0, 1_700_000_001_003)))
    cps = [dict(chains.checkpoint(1_700_000_002_000, "sha256:x"))]
    assert not verify_chains(receipts, cps, RING).ok  # the new key is not trusted yet
    verdict = verify_chains(receipts, cps, Keyring.of([KEY.public, OTHER.public]))
    assert verdict.ok and verdict.key_ids == tuple(sorted((KEY.key_id, OTHER.key_id)))


@pytest.mark.parametrize("dropped", [1, 2, 5])
def test_the_newest_receipts_dropped_after_a_checkpoint_are_detected(dropped: int) -> None:
    receipts, cps = sealed(12)
    newest_p1 = [r for r in receipts if r["partition"] == 1][-dropped:]
    kept = [r for r in receipts if r not in newest_p1]
    problems = verify_chains(kept, cps, RING).problems
    assert [p.kind for p in problems] == ["dropped"]
    assert f"up to seq {newest_p1[-1]['seq']}" in problems[0].detail
    assert "partition 1" in problems[0].detail


def test_checkpoint_heads_older_than_the_window_need_not_be_present() -> None:
    chains = Chains(KEY, 3)
    early = [dict(chains.seal(body(i), i % 3, 1_000 + i)) for i in range(3)]
    cp = dict(chains.checkpoint(1_100, "sha256:x"))
    late = [dict(chains.seal(body(i), i % 3, 2_000 + i)) for i in range(3, 6)]
    anchors = {r["partition"]: r for r in early}
    assert verify_chains(late, [cp], RING, since_ms=2_000, anchors=anchors).ok
    # the same checkpoint over a window that includes its heads: they must be there
    assert kinds(verify_chains(late, [cp], RING, since_ms=1_000, anchors=anchors)) >= {"dropped"}


def test_a_changed_checkpoint_is_named() -> None:
    receipts, cps = sealed(6)
    cps[0]["heads"][0]["seq"] = 0
    assert [p.kind for p in verify_chains(receipts, cps, RING).problems] == ["bad-signature"]


def test_policy_digest_is_stable_and_follows_the_journaling_policy() -> None:
    base = make_config()
    same = make_config({"metrics": {"journal_port": 19999}, "delivery": {"expiry_seconds": 60}})
    assert policy_digest(base) == policy_digest(same)
    reordered = make_config({"organization": {"accepted_domains": ["b.example", "corp.example"]}})
    reordered2 = make_config({"organization": {"accepted_domains": ["corp.example", "b.example"]}})
    assert policy_digest(reordered) == policy_digest(reordered2) != policy_digest(base)
    moved = make_config({"journal": {"inbound": {"address": "archive@corp.example"}}})
    assert policy_digest(moved) != policy_digest(base)
    off = make_config({"journal": {"outbound": {"enabled": False}}})
    assert policy_digest(off) != policy_digest(base)
    assert policy_digest(base).startswith("sha256:") and len(policy_digest(base)) == 71
    assert policy_document(base)["inbound"]["address"] == "journal-in@corp.example"


def test_sealing_does_not_mutate_the_body() -> None:
    b = body(1)
    before = copy.deepcopy(b)
    Chains(KEY, 1).seal(b, 0, 5)
    assert b == before


def test_every_problem_kind_is_listed_for_the_metrics() -> None:
    """The verification-failure counter starts a series per kind in PROBLEM_KINDS: a kind
    verify.py names but the list lacks would appear only at its first failure."""
    import re
    from pathlib import Path

    from evidence.verify import PROBLEM_KINDS

    source = (Path(__file__).resolve().parents[1] / "evidence" / "verify.py").read_text()
    named = set(re.findall(r'Problem\(\s*"([a-z-]+)"', source))
    assert named and named <= set(PROBLEM_KINDS), sorted(named - set(PROBLEM_KINDS))
