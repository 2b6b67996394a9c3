"""Routing of relayed originals (pure): which next hop each recipient goes to, and the envelope
a RELAY copy is sent with.

A message accepted on a listener with ``relay = true`` is owed to its recipients, not only to the
journal. The relay stage (:mod:`relay.handler`, its own consumer group on the messages topic)
turns each such ``MessageReceived`` into one ``JournalCopy`` of kind ``RELAY`` per destination --
the recipients of one next hop travel in one transaction -- and sends it with the original
envelope (:mod:`relay.sender`): MAIL FROM with BODY/SMTPUTF8/RET/ENVID, each RCPT with
NOTIFY/ORCPT. Failures go back to the original sender as RFC 3464 DSNs (:mod:`relay.sender_dsn`),
never to the journal NDR addresses.

Routing, per recipient: ``relay.domains`` (exact domain) first, then ``relay.inbound`` for
internal recipients and ``relay.outbound`` for external ones. A next hop with ``mx = true`` is
looked up in DNS per recipient domain (:mod:`relay.mx`; RFC 5321 section 5.1: MX by preference,
the domain's own address when it has no MX, a null MX refuses mail).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailjournal.addresses import domain_of
from mailjournal.config import Config, NextHopConfig
from mailjournal.smtp.wire import BodyFacts, Buffer
from mailjournal.trace import received_field
from schemas.events import JournalCopyKind, ReportFormat, make_copy_id
from schemas.records import (
    covered_recipient,
    journal_copy,
    mail_params,
    recipient,
    relay_envelope,
)


def route_key(address: str, config: Config) -> str:
    """The destination of one recipient: ``domain:<d>``, ``inbound`` or ``outbound``, followed
    by ``|mx:<domain>`` when that next hop is an MX lookup."""
    domain = domain_of(address).lower().rstrip(".")
    relay = config.relay
    hop: NextHopConfig | None
    if domain in relay.domains:
        rule, hop = f"domain:{domain}", relay.domains[domain]
    elif config.organization.is_internal_domain(domain):
        rule, hop = "inbound", relay.inbound
    else:
        rule, hop = "outbound", relay.outbound
    if hop is None:
        raise ValueError(f"relay: no next hop for {rule}")
    return f"{rule}|mx:{domain}" if hop.mx else rule


def hop_for_key(key: str, config: Config) -> tuple[NextHopConfig, str | None]:
    """The next hop's settings and, for an MX route, the domain to look up."""
    rule, _, mx = key.partition("|mx:")
    relay = config.relay
    if rule.startswith("domain:"):
        hop = relay.domains.get(rule.removeprefix("domain:"))
    else:
        hop = relay.inbound if rule == "inbound" else relay.outbound
    if hop is None:
        raise ValueError(f"relay: next hop {key!r} is no longer configured")
    return hop, (mx or None)


def group_recipients(
    recipients: Sequence[Mapping[str, Any]], config: Config
) -> dict[str, list[dict[str, Any]]]:
    """Recipients by destination, in RCPT order: one transaction per destination."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in recipients:
        groups.setdefault(route_key(str(r["address"]), config), []).append(dict(r))
    return groups


def relay_copy_id(event_id: str, key: str) -> str:
    return make_copy_id(event_id, f"relay:{key}")


def mail_args(params: Mapping[str, Any]) -> list[str]:
    """The original MAIL FROM parameters as sent on (SIZE is recomputed by the client)."""
    out = []
    if params.get("body"):
        out.append(f"BODY={params['body']}")
    if params.get("smtputf8"):
        out.append("SMTPUTF8")
    if params.get("ret"):
        out.append(f"RET={params['ret']}")
    if params.get("envid"):
        out.append(f"ENVID={params['envid']}")
    return out


def rcpt_args(recipient: Mapping[str, Any]) -> list[str]:
    out = []
    if recipient.get("notify"):
        out.append("NOTIFY=" + ",".join(recipient["notify"]))
    if recipient.get("orcpt"):
        out.append(f"ORCPT={recipient['orcpt']}")
    return out


def received_header(event: Mapping[str, Any], config: Config) -> bytes:
    """Our trace field (RFC 5321 section 4.4): it makes every pass through the relay a hop that
    the loop check of ingest counts (the one ingest prepends, see :mod:`mailjournal.trace`)."""
    return received_field(event, config.ingest.hostname)


def relay_copies(event: Mapping[str, Any], config: Config) -> list[dict[str, Any]]:
    """One RELAY copy per destination of a ``MessageReceived`` from a relay listener."""
    raw: Buffer = event["raw"]  # a view of the consumed record (tail_view)
    facts = BodyFacts.from_record(event.get("body_facts"))
    # ingest prepends the same field to events since MessageReceived v2: one of ours per hop
    if config.relay.add_received and not event.get("prepended_length"):
        prefix = received_header(event, config)
        raw = prefix + raw
        facts = BodyFacts.of(prefix).followed_by(facts) if facts else None
    body_facts = facts.record() if facts else None
    headers = event.get("headers") or {}
    sender = event.get("mail_from") or ""
    return [
        dict(
            journal_copy(
                copy_id=relay_copy_id(str(event["event_id"]), key),
                event_id=event["event_id"],
                kind=JournalCopyKind.RELAY,
                received_at=event["received_at"],
                journal_address=rcpts[0]["address"],
                ndr_address=sender,
                format=ReportFormat.COPY,
                original_sender=sender,
                recipients=[covered_recipient(r["address"]) for r in rcpts],
                message_id=headers.get("message_id"),
                subject=headers.get("subject"),
                relay=relay_envelope(
                    mail_params(**(event.get("mail_params") or {})),
                    [recipient(**r) for r in rcpts],
                    key,
                ),
                original=raw,
                body_facts=body_facts,
            )
        )
        for key, rcpts in group_recipients(event.get("recipients") or [], config).items()
    ]


def with_recipients(copy: Mapping[str, Any], rcpts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``copy`` narrowed to ``rcpts`` (those still owed after a partial attempt)."""
    out = dict(copy)
    keep = {str(r["address"]) for r in rcpts}
    out["relay"] = {**copy["relay"], "recipients": [dict(r) for r in rcpts]}
    out["recipients"] = [r for r in copy.get("recipients") or [] if r["address"] in keep]
    out["journal_address"] = str(rcpts[0]["address"]) if rcpts else copy["journal_address"]
    return out
