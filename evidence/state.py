"""The receipt writer's join, pure: which messages have every owed copy final.

Per message (keyed by event id) the writer keeps what its receipt will say: the message's
envelope and client (from ``messages``), the copies the journal worker emitted (``journal``),
and each copy's final outcome (``outcomes``). Which copies a message owes is known once the
journal worker has committed past the message's offset (its copies are committed in the same
transaction) and the writer has read the journal topic up to where it stood then:
:meth:`Join.decided` records that watermark per messages partition. A message is *ready* when
it is decided and every owed copy has a final outcome (DELIVERED, NDR_SENT, DEAD_LETTERED).

State is bounded by the messages in flight (delivery's expiry is the longest a copy stays
open) plus, for :data:`DONE_HORIZON_MS`, a marker per message receipted, so a late duplicate
outcome is not mistaken for a new message. Every entry serialises to JSON for the writer's
changelog (written in the same transaction as the receipts and the offsets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailjournal.trust import event_client_trusted
from schemas import records
from schemas.events import JournalReceipt, ReceiptCopy, to_millis

FINAL = frozenset({"DELIVERED", "NDR_SENT", "DEAD_LETTERED"})
DONE_HORIZON_MS = 6 * 3600 * 1000


@dataclass
class Entry:
    message: dict[str, Any] | None = None  # receipt fields of the MessageReceived
    position: tuple[int, int] | None = None  # (messages partition, offset)
    copies: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    done_at: int | None = None  # receipt written (a marker only)
    seen_at: int = 0  # first record of the message seen (ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "position": list(self.position) if self.position else None,
            "copies": self.copies,
            "outcomes": self.outcomes,
            "done_at": self.done_at,
            "seen_at": self.seen_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        pos = data.get("position")
        return cls(
            message=data.get("message"),
            position=(int(pos[0]), int(pos[1])) if pos else None,
            copies=dict(data.get("copies") or {}),
            outcomes=dict(data.get("outcomes") or {}),
            done_at=data.get("done_at"),
            seen_at=int(data.get("seen_at") or 0),
        )


def message_fields(event: Mapping[str, Any], trusted_networks: Iterable[str]) -> dict[str, Any]:
    client = event.get("client") or {}
    return {
        "received_at": to_millis(event["received_at"]),
        "sha256": str(event["sha256"]),
        "size": int(event["size"]),
        "mail_from": str(event.get("mail_from") or ""),
        "recipients": [str(r["address"]) for r in event.get("recipients") or ()],
        "client": records.receipt_client(
            ip=str(client.get("ip") or ""),
            helo=str(client.get("helo") or ""),
            auth_user=event.get("auth_user"),
            listener=str(event.get("listener") or ""),
            listener_role=str(event.get("listener_role") or ""),
            tls=event.get("tls") is not None,
            trusted=event_client_trusted(event, trusted_networks),
        ),
    }


class Join:
    def __init__(self, trusted_networks: Iterable[str]):
        self.networks = tuple(str(n) for n in trusted_networks)
        self.entries: dict[str, Entry] = {}
        self.decided_upto: dict[int, int] = {}  # messages partition -> first undecided offset
        self.dirty: set[str] = set()  # event ids changed since the last changelog write
        # what ready() must look at: the messages touched since, or all open ones when the
        # decided watermark moved (keeps a batch's cost independent of the done markers)
        self._touched: set[str] = set()
        self._open: set[str] = set()
        self._moved = False

    def _entry(self, event_id: str, now: int) -> Entry:
        entry = self.entries.get(event_id)
        if entry is None:
            entry = self.entries[event_id] = Entry(seen_at=now)
            self._open.add(event_id)
        if entry.done_at is None:
            self._touched.add(event_id)
        return entry

    def add_message(self, event: Mapping[str, Any], partition: int, offset: int, now: int) -> None:
        entry = self._entry(str(event["event_id"]), now)
        if entry.done_at is not None:
            return
        entry.message = message_fields(event, self.networks)
        entry.position = (partition, offset)
        self.dirty.add(str(event["event_id"]))

    def add_copy(self, copy: Mapping[str, Any], now: int) -> None:
        if str(copy.get("kind")) != "JOURNAL" or copy.get("replay_run"):
            return  # NDRs, relayed originals and replays' copies are not the owed journal copies
        entry = self._entry(str(copy["event_id"]), now)
        if entry.done_at is not None:
            return
        entry.copies[str(copy["copy_id"])] = {
            "journal_address": str(copy["journal_address"]),
            "format": str(copy["format"]),
            "directions": sorted(str(d) for d in copy.get("directions") or ()),
            "policy_digest": copy.get("policy_digest"),
        }
        self.dirty.add(str(copy["event_id"]))

    def add_outcome(self, outcome: Mapping[str, Any], now: int) -> None:
        if str(outcome.get("kind")) != "JOURNAL" or str(outcome.get("status")) not in FINAL:
            return
        entry = self._entry(str(outcome["event_id"]), now)
        if entry.done_at is not None:
            return
        entry.outcomes[str(outcome["copy_id"])] = {
            "status": str(outcome["status"]),
            "last_reply": outcome.get("remote_reply"),
            "delivered_to_host": outcome.get("delivered_to_host"),
            "ndr_copy_id": outcome.get("ndr_copy_id"),
            "attempts": int(outcome.get("attempts") or 0),
            "final_at": to_millis(outcome["at"]),
        }
        self.dirty.add(str(outcome["event_id"]))

    def decided(self, upto: Mapping[int, int]) -> None:
        for partition, offset in upto.items():
            if offset > self.decided_upto.get(partition, -1):
                self.decided_upto[partition] = offset
                self._moved = True

    def is_ready(self, entry: Entry) -> bool:
        if entry.done_at is not None or entry.message is None or entry.position is None:
            return False
        partition, offset = entry.position
        if self.decided_upto.get(partition, -1) <= offset:
            return False
        return all(c in entry.outcomes for c in entry.copies)

    def ready(self) -> list[str]:
        """Event ids whose receipt can be written, oldest message first."""
        candidates = self._open if self._moved else self._touched & self._open
        out = [e for e in candidates if self.is_ready(self.entries[e])]
        self._touched = set()
        self._moved = False
        return sorted(out, key=lambda e: (self.entries[e].message or {}).get("received_at", 0))

    def pending(self) -> int:
        return len(self._open)

    def forget(self, event_id: str) -> None:
        """A changelog tombstone read back at start."""
        self.entries.pop(event_id, None)
        self._open.discard(event_id)

    def restored(self, event_id: str, entry: Entry) -> None:
        """An entry read back from the changelog at start."""
        self.entries[event_id] = entry
        if entry.done_at is None:
            self._open.add(event_id)
            self._moved = True

    def body(self, event_id: str, writer_digest: str) -> JournalReceipt:
        """The unsigned receipt of a ready message."""
        entry = self.entries[event_id]
        assert entry.message is not None
        m = entry.message
        copies: list[ReceiptCopy] = []
        for copy_id, c in entry.copies.items():
            o = entry.outcomes[copy_id]
            copies.append(
                records.receipt_copy(
                    copy_id=copy_id,
                    journal_address=c["journal_address"],
                    format=c["format"],
                    directions=c["directions"],
                    status=o["status"],
                    last_reply=o["last_reply"],
                    delivered_to_host=o["delivered_to_host"],
                    ndr_copy_id=o["ndr_copy_id"],
                    attempts=o["attempts"],
                    final_at=o["final_at"],
                    policy_digest=c["policy_digest"],
                )
            )
        digests = sorted({c["policy_digest"] for c in copies if c["policy_digest"]})
        return records.journal_receipt(
            event_id=event_id,
            received_at=int(m["received_at"]),
            message_sha256=m["sha256"],
            size=int(m["size"]),
            mail_from=m["mail_from"],
            recipients=m["recipients"],
            client=records.receipt_client(**m["client"]),
            copies=copies,
            policy_digest=digests[0] if digests else writer_digest,
        )

    def mark_done(self, event_id: str, at: int) -> None:
        self.entries[event_id] = Entry(done_at=at, seen_at=at)
        self._open.discard(event_id)
        self.dirty.add(event_id)

    def expired(self, now: int) -> list[str]:
        """Done markers past the horizon (and records of messages we will never see, such as
        a late duplicate outcome of one already pruned): their changelog entry is deleted."""
        out = []
        for event_id, entry in self.entries.items():
            if (entry.done_at is not None and now - entry.done_at > DONE_HORIZON_MS) or (
                entry.message is None and now - entry.seen_at > 8 * DONE_HORIZON_MS
            ):
                out.append(event_id)
        for event_id in out:
            del self.entries[event_id]
            self._open.discard(event_id)
        return out


def receipt_partition(event_id: str, partitions: int) -> int:
    """The receipts partition (chain) of a message: stable, from its event id."""
    return int(hashlib.sha256(event_id.encode("utf-8")).hexdigest()[:8], 16) % partitions
