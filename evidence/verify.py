"""Checking receipts and checkpoints: pure, the same for Kafka and for an exported bundle.

:func:`verify_chains` walks every partition's receipts in the order they were read and names
each problem: a bad or unknown signature, receipts out of order (swapped), a gap in the
sequence (a deleted receipt), a link whose ``prev_hash`` is not the previous receipt's hash (a
changed or substituted receipt), a duplicate receipt, and a checkpoint whose head is missing
(receipts dropped from the end of a chain) or differs from the receipt present.
:func:`coverage_problems` checks that every accepted message has a receipt with the copies it
was owed.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evidence.canonical import GENESIS, record_hash
from evidence.keys import Keyring

# every kind of problem a verification names (metrics start each at 0)
PROBLEM_KINDS = (
    "bad-signature",
    "broken-link",
    "checkpoint",
    "copies",
    "dropped",
    "duplicate",
    "malformed",
    "missing",
    "no-receipt",
    "out-of-order",
)


@dataclass(frozen=True, order=True)
class Problem:
    kind: str  # one of PROBLEM_KINDS
    where: str
    detail: str

    def line(self) -> str:
        return f"{self.kind:<16} {self.where}: {self.detail}"


@dataclass
class Verdict:
    receipts: int = 0
    checkpoints: int = 0
    partitions: int = 0
    key_ids: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [
            f"receipts {self.receipts} in {self.partitions} chains, checkpoints "
            f"{self.checkpoints}, signed by keys {', '.join(self.key_ids) or '-'}",
        ]
        lines += [p.line() for p in self.problems]
        lines.append(
            "OK: every signature, link and checkpoint verifies"
            if self.ok
            else f"FAILED: {len(self.problems)} problem(s)"
        )
        return "\n".join(lines)


def _where(r: Mapping[str, Any]) -> str:
    return f"receipt p{r.get('partition')}/seq {r.get('seq')} (message {r.get('event_id')})"


def verify_chains(
    receipts: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[Mapping[str, Any]],
    keyring: Keyring,
    *,
    since_ms: int = 0,
    anchors: Mapping[int, Mapping[str, Any]] | None = None,
) -> Verdict:
    """Every problem of ``receipts`` (in the order read) and ``checkpoints``.

    A window (``since_ms``) may start mid-chain: ``anchors`` holds, per partition, the last
    receipt written before it, to which the window's first receipt must link (a chain that
    starts after seq 0 without one has lost its first receipts); a checkpoint's head older
    than the window need not be present."""
    anchors = anchors or {}
    problems: list[Problem] = []
    by_partition: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    seen_events: dict[str, str] = {}
    keys: set[str] = set()
    n = 0
    for r in receipts:
        n += 1
        keys.add(str(r.get("key_id")))
        why = keyring.problem(r)
        if why:
            problems.append(Problem("bad-signature", _where(r), why))
        event = str(r.get("event_id"))
        if event in seen_events:
            problems.append(
                Problem(
                    "duplicate", _where(r), f"a second receipt; the first is {seen_events[event]}"
                )
            )
        else:
            seen_events[event] = _where(r)
        try:
            by_partition[int(r["partition"])].append(r)
        except (KeyError, TypeError, ValueError):
            problems.append(Problem("malformed", _where(r), "no partition"))
    for partition, chain in sorted(by_partition.items()):
        anchor = anchors.get(partition)
        if anchor is not None:
            why = keyring.problem(anchor)
            if why:
                problems.append(Problem("bad-signature", "anchor " + _where(anchor), why))
            elif int(anchor["written_at"]) >= since_ms:
                problems.append(
                    Problem("malformed", "anchor " + _where(anchor), "written inside the window")
                )
        problems += _chain_problems(partition, chain, anchor)
    cps = list(checkpoints)
    for cp in cps:
        keys.add(str(cp.get("key_id")))
        problems += _checkpoint_problems(cp, by_partition, keyring, since_ms)
    return Verdict(
        receipts=n,
        checkpoints=len(cps),
        partitions=len(by_partition),
        key_ids=tuple(sorted(keys)),
        problems=tuple(problems),
    )


def _chain_problems(
    partition: int, chain: Sequence[Mapping[str, Any]], anchor: Mapping[str, Any] | None
) -> list[Problem]:
    out: list[Problem] = []
    seqs = [int(r["seq"]) for r in chain]
    for prev, cur in itertools.pairwise(chain):
        if int(cur["seq"]) < int(prev["seq"]):
            out.append(
                Problem(
                    "out-of-order",
                    _where(cur),
                    f"comes after seq {prev['seq']} (message {prev['event_id']}): receipts "
                    "swapped or reordered",
                )
            )
    ordered = sorted(chain, key=lambda r: int(r["seq"]))
    first = ordered[0]
    if int(first["seq"]) == 0 and first["prev_hash"] != GENESIS:
        out.append(Problem("broken-link", _where(first), "the first receipt must link to genesis"))
    if int(first["seq"]) > 0 and anchor is None:
        out.append(
            Problem(
                "missing",
                f"partition {partition}",
                f"seq 0..{int(first['seq']) - 1} absent before message {first['event_id']} "
                "and no earlier receipt anchors the window (receipts deleted)",
            )
        )
    if anchor is not None:
        ordered = [anchor, *ordered]
    for prev, cur in itertools.pairwise(ordered):
        gap = int(cur["seq"]) - int(prev["seq"])
        if gap == 0:
            continue  # a duplicate seq: named below as a broken link if the records differ
        if gap > 1:
            lo, hi = int(prev["seq"]) + 1, int(cur["seq"]) - 1
            span = f"seq {lo}" if lo == hi else f"seq {lo}..{hi}"
            out.append(
                Problem(
                    "missing",
                    f"partition {partition}",
                    f"{span} absent between messages {prev['event_id']} and {cur['event_id']} "
                    "(receipts deleted)",
                )
            )
            continue
        if cur["prev_hash"] != record_hash(prev):
            out.append(
                Problem(
                    "broken-link",
                    _where(cur),
                    f"prev_hash is not the hash of seq {prev['seq']}: that receipt was changed "
                    "or replaced",
                )
            )
    dup = {s for s in seqs if seqs.count(s) > 1}
    for s in sorted(dup):
        out.append(
            Problem("duplicate", f"partition {partition}", f"seq {s} appears more than once")
        )
    return out


def _checkpoint_problems(
    cp: Mapping[str, Any],
    by_partition: Mapping[int, Sequence[Mapping[str, Any]]],
    keyring: Keyring,
    since_ms: int,
) -> list[Problem]:
    where = f"checkpoint {cp.get('checkpoint_id')}"
    why = keyring.problem(cp)
    if why:
        return [Problem("bad-signature", where, why)]
    out: list[Problem] = []
    for head in cp.get("heads") or ():
        seq = int(head["seq"])
        if seq < 0 or int(head["written_at"]) < since_ms:
            continue  # empty chain, or its head is older than the window
        chain = by_partition.get(int(head["partition"]), ())
        present = [r for r in chain if int(r["seq"]) == seq]
        newest = max((int(r["seq"]) for r in chain), default=None)
        if not present:
            have = "none" if newest is None else f"the newest present is seq {newest}"
            out.append(
                Problem(
                    "dropped",
                    where,
                    f"recorded partition {head['partition']} up to seq {seq}, {have}: "
                    "receipts dropped from the end of the chain",
                )
            )
        elif record_hash(present[0]) != head["hash"]:
            out.append(
                Problem(
                    "checkpoint",
                    where,
                    f"partition {head['partition']} seq {seq} differs from the checkpointed receipt",
                )
            )
    return out


def coverage_problems(
    owed: Mapping[str, set[str]],
    receipts: Mapping[str, Mapping[str, Any]],
    *,
    pending: Iterable[str] = (),
) -> list[Problem]:
    """Every accepted message (event id -> the copy ids emitted for it) must have a receipt
    listing exactly those copies; ``pending`` messages (younger than the grace period) are
    excused."""
    skip = set(pending)
    out: list[Problem] = []
    for event, copies in sorted(owed.items()):
        r = receipts.get(event)
        if r is None:
            if event not in skip:
                out.append(Problem("no-receipt", f"message {event}", "accepted, no receipt"))
            continue
        listed = {str(c["copy_id"]) for c in r.get("copies") or ()}
        if listed != copies:
            out.append(
                Problem(
                    "copies",
                    _where(r),
                    f"lists copies {sorted(listed)}, the journal topic has {sorted(copies)}",
                )
            )
    return out
