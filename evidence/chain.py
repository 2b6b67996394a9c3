"""Sealing receipts into their partition's chain, and checkpoints of every chain's head.

Pure: :class:`Chains` holds each partition's head (seq and hash of its newest receipt) and turns
an unsigned receipt body into the next signed link; the writer restores the heads from the
receipts topic at start and keeps them in step with what it commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evidence.canonical import GENESIS, record_hash
from evidence.keys import SigningKey
from schemas.events import JournalCheckpoint, JournalReceipt, new_event_id
from schemas.records import checkpoint_head, journal_checkpoint


@dataclass(frozen=True)
class Head:
    seq: int = -1  # no receipt yet
    hash: str = GENESIS
    written_at: int = 0


def head_of(receipt: Mapping[str, Any]) -> Head:
    return Head(int(receipt["seq"]), record_hash(receipt), int(receipt["written_at"]))


class Chains:
    def __init__(self, key: SigningKey, partitions: int, heads: Mapping[int, Head] | None = None):
        self.key = key
        self.heads: dict[int, Head] = {p: Head() for p in range(partitions)}
        self.heads.update(heads or {})

    def seal(self, body: Mapping[str, Any], partition: int, written_at: int) -> JournalReceipt:
        """The next receipt of ``partition``: ``body`` linked to the head, signed; the head
        moves on to it."""
        head = self.heads[partition]
        record = {
            **body,
            "partition": partition,
            "seq": head.seq + 1,
            "prev_hash": head.hash,
            "written_at": written_at,
        }
        signed = self.key.sign(record)
        self.heads[partition] = head_of(signed)
        return signed  # type: ignore[return-value]

    def checkpoint(self, at: int, policy_digest: str) -> JournalCheckpoint:
        record = journal_checkpoint(
            checkpoint_id=new_event_id(),
            at=at,
            heads=[
                checkpoint_head(p, h.seq, h.hash, h.written_at)
                for p, h in sorted(self.heads.items())
            ],
            policy_digest=policy_digest,
        )
        return self.key.sign(record)  # type: ignore[return-value]

    def snapshot(self) -> dict[int, Head]:
        return dict(self.heads)

    def restore(self, heads: Mapping[int, Head]) -> None:
        self.heads = dict(heads)
