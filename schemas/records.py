"""Builders of the event records: each record type is written out once, here.

Every stage that creates a record calls these instead of spelling the fields out, so a field
added to a schema is added in one place and a type checker sees every record's shape. Enum
fields are stored as plain ``str`` (a :class:`~enum.StrEnum` member is accepted), so a built
record compares equal to its decoded form; timestamp fields are kept as given (``datetime``, or
``int`` milliseconds as records built in code usually hold them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from schemas.events import (
    BodyFacts,
    CheckpointHead,
    ClientInfo,
    CoveredRecipient,
    DeadLetter,
    DeliveryOutcome,
    JournalCheckpoint,
    JournalCopy,
    JournalReceipt,
    MailParams,
    MessageReceived,
    PolicyChange,
    ReceiptClient,
    ReceiptCopy,
    Recipient,
    RecipientType,
    RelayEnvelope,
    SelectedHeaders,
    Timestamp,
    TlsInfo,
    new_event_id,
    now_millis,
)


def client_info(ip: str, port: int, helo: str, proxied_by: str | None = None) -> ClientInfo:
    return {"ip": ip, "port": port, "helo": helo, "proxied_by": proxied_by}


def mail_params(
    *,
    size: int | None = None,
    body: str | None = None,
    smtputf8: bool = False,
    ret: str | None = None,
    envid: str | None = None,
    other: Mapping[str, str] | None = None,
) -> MailParams:
    """MAIL FROM parameters; the defaults are a plain ``MAIL FROM:<...>``."""
    return {
        "size": size,
        "body": body,
        "smtputf8": smtputf8,
        "ret": ret,
        "envid": envid,
        "other": dict(other or {}),
    }


def recipient(
    address: str,
    *,
    notify: Sequence[str] | None = None,
    orcpt: str | None = None,
    other: Mapping[str, str] | None = None,
) -> Recipient:
    """An envelope recipient (RCPT TO and its parameters)."""
    return {
        "address": address,
        "notify": list(notify) if notify is not None else None,
        "orcpt": orcpt,
        "other": dict(other or {}),
    }


def message_received(
    *,
    event_id: str,
    received_at: Timestamp,
    ingest_host: str,
    listener: str,
    listener_role: str,
    client: ClientInfo,
    tls: TlsInfo | None,
    auth_user: str | None,
    mail_from: str,
    mail_params: MailParams,
    recipients: list[Recipient],
    headers: SelectedHeaders,
    sha256: str,
    raw: bytes,
    body_facts: BodyFacts | None = None,
) -> MessageReceived:
    """A ``MessageReceived`` as the SMTP transaction delivered it (``raw`` the bytes as received,
    ``sha256`` their digest, computed by the caller as it may hash off the event loop). The v2
    fields (``prepended_length`` ...) are set when ingest prepends its own header fields."""
    return {
        "event_id": event_id,
        "received_at": received_at,
        "ingest_host": ingest_host,
        "listener": listener,
        "listener_role": str(listener_role),
        "client": client,
        "tls": tls,
        "auth_user": auth_user,
        "mail_from": mail_from,
        "mail_params": mail_params,
        "recipients": recipients,
        "headers": headers,
        "size": len(raw),
        "sha256": sha256,
        "body_facts": body_facts,
        "raw": raw,
    }


def covered_recipient(
    address: str,
    type: str = RecipientType.RECIPIENT,
    *,
    expanded: str | None = None,
    forwarded: str | None = None,
) -> CoveredRecipient:
    """A recipient a journal copy reports on (``Recipient:`` when To/Cc/Bcc is not known)."""
    return {"address": address, "type": str(type), "expanded": expanded, "forwarded": forwarded}


def relay_envelope(
    mail_params: MailParams, recipients: list[Recipient], next_hop: str
) -> RelayEnvelope:
    """The envelope a RELAY copy is sent on with, before any delay DSN was sent for it."""
    return {
        "mail_params": mail_params,
        "recipients": recipients,
        "next_hop": next_hop,
        "delay_notified": False,
    }


def journal_copy(
    *,
    copy_id: str,
    event_id: str,
    kind: str,
    received_at: Timestamp,
    journal_address: str,
    ndr_address: str,
    format: str,
    original_sender: str,
    recipients: list[CoveredRecipient],
    original: bytes | memoryview,  # a view: the original of a decoded record (tail_view)
    directions: Iterable[str] = (),
    sources: Iterable[str] = (),
    message_id: str | None = None,
    subject: str | None = None,
    about_copy_id: str | None = None,
    relay: RelayEnvelope | None = None,
    replay_run: str | None = None,
    policy_digest: str | None = None,
    body_facts: BodyFacts | None = None,
) -> JournalCopy:
    """A new ``JournalCopy`` of any kind, before its first attempt: deliverable now
    (``not_before`` 0), no attempt or reply yet. Retries update the attempt fields of the copy
    they re-queue; only RELAY copies (originals, and DSNs to their senders) carry ``relay``."""
    return {
        "copy_id": copy_id,
        "event_id": event_id,
        "kind": str(kind),
        "received_at": received_at,
        "directions": [str(d) for d in directions],
        "sources": [str(s) for s in sources],
        "journal_address": journal_address,
        "ndr_address": ndr_address,
        "format": str(format),
        "original_sender": original_sender,
        "recipients": recipients,
        "message_id": message_id,
        "subject": subject,
        "attempt": 0,
        "not_before": 0,
        "first_attempt_at": None,
        "last_reply": None,
        "about_copy_id": about_copy_id,
        "relay": relay,
        "replay_run": replay_run,
        "policy_digest": policy_digest,
        "body_facts": body_facts,
        "original": original,
    }


def delivery_outcome(
    *,
    copy_id: str,
    event_id: str,
    kind: str,
    status: str,
    journal_address: str,
    ndr_address: str,
    directions: Iterable[str],
    attempts: int,
    remote_reply: str | None,
    at: Timestamp,
    next_attempt_at: Timestamp | None = None,
    ndr_copy_id: str | None = None,
    delivered_to_host: str | None = None,
) -> DeliveryOutcome:
    """A ``DeliveryOutcome`` (keyed by copy id on the compacted outcomes topic)."""
    return {
        "copy_id": copy_id,
        "event_id": event_id,
        "kind": str(kind),
        "status": str(status),
        "journal_address": journal_address,
        "ndr_address": ndr_address,
        "directions": [str(d) for d in directions],
        "attempts": attempts,
        "remote_reply": remote_reply,
        "at": at,
        "next_attempt_at": next_attempt_at,
        "ndr_copy_id": ndr_copy_id,
        "delivered_to_host": delivered_to_host,
    }


def dead_letter(
    *,
    reason: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    headers: Mapping[str, bytes],
    copy_id: str | None = None,
    event_id: str | None = None,
    at: Timestamp | None = None,
) -> DeadLetter:
    """A ``DeadLetter`` for the Kafka record at ``source_topic[partition]@offset`` (``value``
    the record as read, or what it became), with a new id; ``at`` defaults to now."""
    return {
        "id": new_event_id(),
        "at": now_millis() if at is None else at,
        "reason": reason,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "value": value,
        "headers": dict(headers),
        "copy_id": copy_id,
        "event_id": event_id,
    }


def receipt_client(
    *,
    ip: str,
    helo: str,
    auth_user: str | None,
    listener: str,
    listener_role: str,
    tls: bool,
    trusted: bool,
) -> ReceiptClient:
    return {
        "ip": ip,
        "helo": helo,
        "auth_user": auth_user,
        "listener": listener,
        "listener_role": str(listener_role),
        "tls": tls,
        "trusted": trusted,
    }


def receipt_copy(
    *,
    copy_id: str,
    journal_address: str,
    format: str,
    directions: Iterable[str],
    status: str,
    last_reply: str | None,
    delivered_to_host: str | None,
    ndr_copy_id: str | None,
    attempts: int,
    final_at: int,
    policy_digest: str | None,
) -> ReceiptCopy:
    return {
        "copy_id": copy_id,
        "journal_address": journal_address,
        "format": str(format),
        "directions": sorted(str(d) for d in directions),
        "status": str(status),
        "last_reply": last_reply,
        "delivered_to_host": delivered_to_host,
        "ndr_copy_id": ndr_copy_id,
        "attempts": attempts,
        "final_at": final_at,
        "policy_digest": policy_digest,
    }


def journal_receipt(
    *,
    event_id: str,
    received_at: int,
    message_sha256: str,
    size: int,
    mail_from: str,
    recipients: Sequence[str],
    client: ReceiptClient,
    copies: Sequence[ReceiptCopy],
    policy_digest: str | None,
    partition: int = 0,
    seq: int = 0,
    prev_hash: str = "",
    written_at: int = 0,
    key_id: str = "",
    signature: str = "",
) -> JournalReceipt:
    """A ``JournalReceipt``; its chain fields (partition ... written_at) and signature are set
    when the writer seals it (``evidence.chain``). Copies sorted by copy id, directions the
    sorted union of the copies' directions."""
    ordered = sorted(copies, key=lambda c: c["copy_id"])
    return {
        "event_id": event_id,
        "partition": partition,
        "seq": seq,
        "prev_hash": prev_hash,
        "written_at": written_at,
        "received_at": received_at,
        "message_sha256": message_sha256,
        "size": size,
        "mail_from": mail_from,
        "recipients": list(recipients),
        "directions": sorted({d for c in ordered for d in c["directions"]}),
        "client": client,
        "copies": list(ordered),
        "policy_digest": policy_digest,
        "key_id": key_id,
        "signature": signature,
    }


def checkpoint_head(partition: int, seq: int, hash: str, written_at: int) -> CheckpointHead:
    return {"partition": partition, "seq": seq, "hash": hash, "written_at": written_at}


def journal_checkpoint(
    *,
    checkpoint_id: str,
    at: int,
    heads: Sequence[CheckpointHead],
    policy_digest: str,
    key_id: str = "",
    signature: str = "",
) -> JournalCheckpoint:
    return {
        "checkpoint_id": checkpoint_id,
        "at": at,
        "heads": list(heads),
        "policy_digest": policy_digest,
        "key_id": key_id,
        "signature": signature,
    }


def policy_change(
    *,
    at: int,
    old_digest: str | None,
    new_digest: str,
    policy: str,
    change_id: str | None = None,
    key_id: str = "",
    signature: str = "",
) -> PolicyChange:
    return {
        "change_id": change_id or new_event_id(),
        "at": at,
        "old_digest": old_digest,
        "new_digest": new_digest,
        "policy": policy,
        "key_id": key_id,
        "signature": signature,
    }
