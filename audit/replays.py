"""The audit's count of replay copies (``mailjournal replay``), kept apart from the live ones.

A replay copy (``replay_run`` set) is no second emission of a live copy and owes nothing the
live reconciliation checks: it is counted per run -- copies, messages, their latest outcomes --
so a run's report (``copies sent``) can be set against what the audit found and delivery did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FINAL = frozenset({"DELIVERED", "NDR_SENT", "DEAD_LETTERED"})


@dataclass
class ReplayRun:
    run_id: str
    copies: Counter[str] = field(default_factory=Counter)  # copy id -> times emitted
    events: set[str] = field(default_factory=set)
    latest: dict[str, tuple[int, str]] = field(default_factory=dict)  # copy id -> (at, status)
    delivered: Counter[str] = field(default_factory=Counter)  # copy id -> DELIVERED outcomes

    def states(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for copy_id in self.copies:
            out[self.latest.get(copy_id, (0, "IN_FLIGHT"))[1]] += 1
        return out

    def line(self) -> str:
        states = ", ".join(f"{k.lower()}={v}" for k, v in sorted(self.states().items()))
        dupes = sum(1 for n in self.copies.values() if n > 1)
        twice = sum(1 for n in self.delivered.values() if n > 1)
        return (
            f"replay run {self.run_id}: copies {len(self.copies)} for {len(self.events)} "
            f"messages; {states or 'no outcome yet'}; emitted twice {dupes}, delivered twice "
            f"{twice}"
        )


class ReplayTally:
    """Replay copies and their outcomes, by run."""

    def __init__(self) -> None:
        self.runs: dict[str, ReplayRun] = {}
        self._run_of: dict[str, str] = {}  # copy id -> run id

    @staticmethod
    def is_replay(copy: Mapping[str, Any]) -> bool:
        return bool(copy.get("replay_run"))

    def add_copy(self, copy: Mapping[str, Any]) -> None:
        run_id = str(copy["replay_run"])
        run = self.runs.setdefault(run_id, ReplayRun(run_id))
        copy_id = str(copy["copy_id"])
        run.copies[copy_id] += 1
        run.events.add(str(copy["event_id"]))
        self._run_of[copy_id] = run_id

    def owns(self, copy_id: str) -> bool:
        return copy_id in self._run_of

    def add_outcome(self, copy_id: str, status: str, at: int) -> None:
        run = self.runs[self._run_of[copy_id]]
        if status == "DELIVERED":
            run.delivered[copy_id] += 1
        last = run.latest.get(copy_id)
        if last is None or (at >= last[0] and not (last[1] in FINAL and status == "RETRYING")):
            run.latest[copy_id] = (at, status)

    def lines(self) -> list[str]:
        return [self.runs[r].line() for r in sorted(self.runs)]
