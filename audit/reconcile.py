"""``mailjournal audit``: prove every accepted message was journaled, and name every gap.

Reads the messages, journal and outcomes topics (``read_committed``) for a time window and
reconciles, per accepted message: the copies the decision logic owes (recomputed now), the copies
emitted, and each copy's outcome. One streaming pass per topic; memory is bounded by the number of
messages and copies in the window, not the topic history.

Gaps (exit status 1): a message owed copies and has none emitted after the grace period; an owed
copy missing; a copy emitted twice to the journal topic (exactly-once broken); a copy with no
outcome after the grace period; a copy still retrying past its expiry; an NDR with no final
outcome; a record the audit cannot interpret (named by topic, partition and offset: an
undecodable record on the messages topic is an accepted message nobody can journal); and the
*independent check* below failing. Duplicate *deliveries* (at-least-once, a crash between the
remote 250 and the offset commit) are listed but are not gaps unless ``--strict-duplicates``.

The audit never crashes on a record: whatever a record holds, it ends as reconciled or as a named
gap. (A Kafka or directory outage ends the run with a one-line error and exit status 2.)

Independent check (:func:`required_globals`): the owed copies above come from the journal
worker's own decision functions, so a bug there (in header parsing, in the direction logic) would
be agreed with. The check re-derives, without ``journal_worker.decide`` and without reading any
header field, from the envelope (MAIL FROM, RCPT TO) and the client's trust (trusted network,
authentication, relay listener) alone, the team's direction rule -- trusted submitter and external
recipient: outbound whatever the MAIL FROM; internal recipient: internal when the client is
trusted and the sender internal, else inbound (a null sender only exempted as our own NDR, by
its verified stamp); untrusted client and external recipient: outbound (fail safe) -- and requires
for every accepted message, in every direction whose global journaling is on, an emitted copy to
that global address covering the direction that was delivered, NDR'd, or is still within the
grace period or its retries (the outcome rules above). What it shares with the stages is only the
configuration's definitions (internal domains, trusted networks, journal/NDR addresses), the
address comparison key and the stamp's MAC check.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from audit.replays import ReplayTally
from mailjournal.addresses import canonical, key
from mailjournal.config import Config, Direction, add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_GAPS, EXIT_NO_VERDICT, EXIT_OK
from mailjournal.faults import fault_point
from mailjournal.times import parse_time

log = logging.getLogger("audit.reconcile")

FINAL = {"DELIVERED", "NDR_SENT", "DEAD_LETTERED"}
GAP_KINDS = (
    "not-journaled",
    "duplicate-copy",
    "no-outcome",
    "stuck",
    "ndr-pending",
    "unreadable",
    "global-missing",
    "global-undelivered",
    "receipt-overdue",
)


@dataclass
class CopyState:
    event_id: str
    kind: str = "JOURNAL"
    owed: bool = False
    emitted: int = 0
    status: str | None = None
    delivered: int = 0
    ndr_copy_id: str | None = None
    last_at: int = 0
    journal_key: str = ""  # the journal address's comparison key (independent check)
    directions: frozenset[str] = frozenset()


@dataclass
class MessageState:
    received_at: int
    owed: set[str] = field(default_factory=set)
    skipped_reason: str | None = None
    # (direction, global journal address key) the independent check requires a copy for
    required: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Gap:
    kind: str
    event_id: str
    copy_id: str | None
    detail: str
    where: str | None = None  # topic[partition]@offset of a record that could not be read

    def line(self) -> str:
        if self.where:
            return f"GAP {self.kind}: unreadable record {self.where}: {self.detail}"
        copy = f" copy {self.copy_id}" if self.copy_id else ""
        return f"GAP {self.kind}: message {self.event_id}{copy}: {self.detail}"


@dataclass
class AuditReport:
    messages: int
    copies_owed: int
    states: Counter[str]
    gaps: list[Gap]
    duplicates: list[tuple[str, int]]
    unexpected: list[str]
    oldest_pending_ms: int | None
    # records that are not the topic's event type ("topic[partition]@offset: why"), each also a
    # gap of kind "unreadable"
    unreadable: list[str] = field(default_factory=list)
    replays: list[str] = field(default_factory=list)  # one line per replay run (audit.replays)

    def has_gaps(self, strict_duplicates: bool = False) -> bool:
        return bool(self.gaps) or (strict_duplicates and bool(self.duplicates))

    def render(self) -> str:
        out = [
            f"messages in window: {self.messages}",
            f"journal copies owed: {self.copies_owed}",
            "copy states: "
            + (", ".join(f"{k.lower()}={v}" for k, v in sorted(self.states.items())) or "none"),
        ]
        if self.oldest_pending_ms is not None:
            age = time.time() - self.oldest_pending_ms / 1000
            when = datetime.fromtimestamp(self.oldest_pending_ms / 1000, UTC).isoformat()
            out.append(f"oldest pending: {when} ({age:.0f} s ago)")
        for copy_id, n in self.duplicates:
            out.append(f"DUPLICATE delivery: copy {copy_id} delivered {n} times")
        for copy_id in self.unexpected:
            out.append(f"NOTE copy {copy_id} is not owed under the current rules (changed config?)")
        out.extend(g.line() for g in self.gaps)
        out.extend(self.replays)
        out.append(f"gaps: {len(self.gaps)}")
        return "\n".join(out)


class Reconciler:
    """Pure bookkeeping: feed it messages, journal copies and outcomes, then ask for the report."""

    def __init__(self) -> None:
        self.messages: dict[str, MessageState] = {}
        self.copies: dict[str, CopyState] = {}
        self.journal_dupes: Counter[str] = Counter()
        self.unreadable: list[tuple[str, str]] = []  # (topic[partition]@offset, why)
        self.by_event: dict[str, list[str]] = {}  # event id -> emitted journal copy ids

    def add_unreadable(self, where: str, why: str) -> None:
        self.unreadable.append((where, why))

    def add_message(
        self,
        event_id: str,
        received_at: int,
        owed: Iterable[str],
        required: Iterable[tuple[str, str]] = (),
    ) -> None:
        state = MessageState(received_at, set(owed), required=set(required))
        self.messages[event_id] = state
        for copy_id in state.owed:
            self.copies.setdefault(copy_id, CopyState(event_id)).owed = True

    def add_copy(
        self,
        copy_id: str,
        event_id: str,
        kind: str = "JOURNAL",
        journal_address: str = "",
        directions: Iterable[str] = (),
    ) -> None:
        state = self.copies.setdefault(copy_id, CopyState(event_id, kind))
        state.kind = kind
        state.emitted += 1
        if journal_address:
            state.journal_key = key(journal_address)
            state.directions = frozenset(str(d).upper() for d in directions)
        if kind == "JOURNAL" and state.emitted == 1:
            self.by_event.setdefault(event_id, []).append(copy_id)

    def add_outcome(
        self, copy_id: str, event_id: str, kind: str, status: str, at: int, ndr_copy_id: str | None
    ) -> None:
        state = self.copies.get(copy_id)
        if state is None:
            if kind != "NDR" and event_id not in self.messages:
                return  # a copy of a message outside the window
            state = self.copies.setdefault(copy_id, CopyState(event_id, kind))
        if status == "DELIVERED":
            state.delivered += 1
        # the latest outcome wins; a final one is never undone by a late retry record
        if at >= state.last_at and not (state.status in FINAL and status == "RETRYING"):
            state.status, state.last_at = status, at
        if ndr_copy_id:
            state.ndr_copy_id = ndr_copy_id

    def report(self, now_ms: int, grace_ms: int, expiry_ms: int) -> AuditReport:
        gaps: list[Gap] = []
        states: Counter[str] = Counter()
        oldest: int | None = None
        for event_id, msg in self.messages.items():
            old_enough = now_ms - msg.received_at > grace_ms
            for copy_id in sorted(msg.owed):
                copy = self.copies[copy_id]
                if copy.emitted == 0:
                    if old_enough:
                        gaps.append(
                            Gap("not-journaled", event_id, copy_id, "owed copy never emitted")
                        )
                    else:
                        states["AWAITING_JOURNAL"] += 1
                        oldest = msg.received_at if oldest is None else min(oldest, msg.received_at)
        for copy_id, copy in self.copies.items():
            if copy.emitted > 1 and copy.kind == "JOURNAL":
                gaps.append(
                    Gap("duplicate-copy", copy.event_id, copy_id, f"emitted {copy.emitted} times")
                )
            if copy.emitted == 0 and copy.kind == "JOURNAL":
                continue  # counted above
            owner = self.messages.get(copy.event_id)
            received = owner.received_at if owner else copy.last_at
            status = copy.status
            if status is None:
                if now_ms - received > grace_ms:
                    gaps.append(Gap("no-outcome", copy.event_id, copy_id, "no delivery outcome"))
                else:
                    states["IN_FLIGHT"] += 1
                    oldest = received if oldest is None else min(oldest, received)
                continue
            states[status] += 1
            if status == "RETRYING":
                oldest = received if oldest is None else min(oldest, received)
                if now_ms - received > expiry_ms + grace_ms:
                    gaps.append(Gap("stuck", copy.event_id, copy_id, "still retrying past expiry"))
            if status == "NDR_SENT" and copy.ndr_copy_id:
                ndr = self.copies.get(copy.ndr_copy_id)
                ndr_final = ndr is not None and ndr.status in {"DELIVERED", "DEAD_LETTERED"}
                if not ndr_final and now_ms - received > grace_ms:
                    gaps.append(Gap("ndr-pending", copy.event_id, copy_id, "NDR not final"))
        gaps.extend(self._independent_gaps(now_ms, grace_ms))
        gaps.extend(Gap("unreadable", "", None, why, where=where) for where, why in self.unreadable)
        duplicates = sorted((cid, c.delivered) for cid, c in self.copies.items() if c.delivered > 1)
        unexpected = sorted(
            cid
            for cid, c in self.copies.items()
            if c.kind == "JOURNAL" and c.emitted and not c.owed and c.event_id in self.messages
        )
        return AuditReport(
            messages=len(self.messages),
            copies_owed=sum(len(m.owed) for m in self.messages.values()),
            states=states,
            gaps=gaps,
            duplicates=duplicates,
            unexpected=unexpected,
            oldest_pending_ms=oldest,
            unreadable=[f"{where}: {why}" for where, why in self.unreadable],
        )

    def _independent_gaps(self, now_ms: int, grace_ms: int) -> list[Gap]:
        """The independent check: each (direction, global address) a message requires has an
        emitted journal copy to that address covering the direction, and that copy was
        delivered or NDR'd (its other states -- in flight, retrying -- are judged by the copy
        checks of :meth:`report`); a dead-lettered one was never delivered."""
        gaps: list[Gap] = []
        for event_id, msg in self.messages.items():
            if not msg.required:
                continue
            emitted = [self.copies[c] for c in self.by_event.get(event_id, ())]
            for direction, address in sorted(msg.required):
                found = [
                    c for c in emitted if c.journal_key == address and direction in c.directions
                ]
                what = f"{direction.lower()} copy to the global address {address}"
                if not found:
                    if now_ms - msg.received_at > grace_ms:
                        gaps.append(
                            Gap("global-missing", event_id, None, f"no {what} (independent check)")
                        )
                    continue
                if not any(c.delivered or c.status == "NDR_SENT" for c in found) and all(
                    c.status == "DEAD_LETTERED" for c in found
                ):
                    gaps.append(
                        Gap(
                            "global-undelivered",
                            event_id,
                            None,
                            f"the {what} was dead-lettered, never delivered (independent check)",
                        )
                    )
        return gaps


# --- reading the topics --------------------------------------------------------------------------


REPLAY_HEADER = "mailjournal-replay-of"  # set by `dlq replay` on a re-queued copy


def read_window(
    cfg: Config, topic: str, since_ms: int | None, timeout: float = 30.0
) -> Iterator[tuple[dict[str, bytes], bytes, str]]:
    """Every committed record of ``topic`` from ``since_ms`` (or the start) up to the end offsets
    as they were when the read began (a stable snapshot, so the audit terminates), each with
    where it is (``topic[partition]@offset``)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from mailjournal.kafka import make_consumer
    from mailjournal.topic_read import read_to_ends

    consumer = make_consumer(
        cfg,
        f"mailjournal-audit-{time.time_ns()}",
        role="audit",
        extra={"enable.partition.eof": True},
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"topic {topic}: {meta.error}")
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        ends = {}
        for tp in parts:
            _, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            ends[tp.partition] = high
        if since_ms is not None:
            starts = consumer.offsets_for_times(
                [TopicPartition(topic, tp.partition, since_ms) for tp in parts], timeout=timeout
            )
        else:
            starts = [TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in parts]
        # offsets_for_times gives -1 where nothing is at or after since_ms: skip that partition
        todo = [tp for tp in starts if tp.offset >= 0 or since_ms is None]
        for msg in read_to_ends(consumer, topic, todo, ends, timeout):
            raw = msg.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            headers = {k: v for k, v in pairs if isinstance(v, bytes)}
            yield headers, msg.value() or b"", f"{topic}[{msg.partition()}]@{msg.offset()}"
    finally:
        consumer.close()


OwedFn = Callable[[dict[str, Any]], list[str]]


class AuditUnavailable(Exception):
    """The audit cannot finish (Kafka or the directory unreachable): no verdict, exit 2."""


def default_owed(cfg: Config) -> OwedFn:
    """The copy ids the journal decision logic owes a message, recomputed with the journal
    worker's own pure functions, today's configuration and directory -- and, like the worker,
    the envelope-only fallback when the decision raises (a directory outage raises
    :class:`AuditUnavailable`: an audit never guesses)."""
    from journal_worker.decide import Decider, fallback_decision
    from journal_worker.lookups import make_directory, resolve
    from mailjournal.directory import DirectoryUnavailable

    directory = make_directory(cfg.directory)
    decider = Decider(cfg, cfg.journal.stamp_key())

    def owed(event: dict[str, Any]) -> list[str]:
        try:
            plan = decider.plan(event)
            lookups = plan.lookups
            answers = resolve(directory, lookups) if lookups and directory is not None else {}
            decision = decider.decide(plan, answers)
        except DirectoryUnavailable as exc:
            raise AuditUnavailable(f"directory: {exc}") from None
        except Exception as exc:
            log.warning("event %s: decided by the fallback (%r)", event.get("event_id"), exc)
            decision = fallback_decision(event, cfg, repr(exc))
        return [c.copy_id for c in decision.copies]

    return owed


# --- the independent check -----------------------------------------------------------------------

_DIRECTIONS = {d.value.upper(): d for d in Direction}


def _trusted(event: dict[str, Any], cfg: Config) -> bool:
    """Trusted network, authenticated session, or a relay listener (re-derived, not the
    worker's)."""
    client = event.get("client") or {}
    return (
        bool(event.get("auth_user"))
        or event.get("listener_role") == "relay"
        or cfg.organization.is_trusted_ip(str(client.get("ip") or ""))
    )


def _stamp_destination(event: dict[str, Any], cfg: Config) -> str | None:
    """The canonical destination of our verified loop-guard stamp on ``event`` (the one
    recipient it exempts: a journal report or NDR arriving where we sent it), else None."""
    from mailjournal.stamp import verify_stamp
    from schemas.events import to_millis

    stamp = (event.get("headers") or {}).get("journal_stamp")
    if not stamp:
        return None
    try:
        keys = cfg.journal.stamp_keys()
    except ValueError:
        return None  # no usable key: no stamp is honoured
    verified = verify_stamp(
        stamp,
        bytes(event.get("raw") or b""),
        keys,
        received_ms=to_millis(event.get("received_at")),
        max_age_seconds=cfg.journal.stamp_max_age_seconds,
    )
    return (
        canonical(verified.destination, cfg.organization.recipient_delimiter) if verified else None
    )


def required_globals(event: dict[str, Any], cfg: Config) -> set[tuple[str, str]]:
    """(direction, global journal address key) of every copy the direction rule requires for
    ``event``, from its envelope and the client's trust alone (see the module docstring)."""
    org = cfg.organization
    delimiter = org.recipient_delimiter
    protected = cfg.protected_keys()
    trusted = _trusted(event, cfg)
    sender = str(event.get("mail_from") or "")
    sender_internal = bool(sender) and org.is_internal_address(sender)
    exempt = _stamp_destination(event, cfg)
    out: set[tuple[str, str]] = set()
    for rcpt in event.get("recipients") or ():
        address = str(rcpt["address"])
        canon = canonical(address, delimiter)
        if canon in protected:
            continue  # journal and NDR addresses are never journaled
        if canon == exempt:
            continue  # our own report or NDR arriving where we sent it (the loop)
        if not org.is_internal_address(address):
            direction = "OUTBOUND"  # trusted: leaves through us; untrusted: fail safe
        elif not trusted:
            direction = "INBOUND"  # a spoofed internal sender from outside is inbound
        elif sender_internal:
            direction = "INTERNAL"
        else:
            direction = "INBOUND"  # an external sender via a trusted filter, or a null sender
        dcfg = cfg.journal.direction(_DIRECTIONS[direction])
        if dcfg.enabled:
            out.update((direction, key(a)) for a in dcfg.addresses)
    return out


def run_audit(
    cfg: Config,
    *,
    since_ms: int | None,
    until_ms: int | None,
    grace_ms: int,
    owed: OwedFn | None = None,
    now_ms: int | None = None,
) -> AuditReport:
    from mailjournal.topics import retry_topic_names
    from schemas import decode
    from schemas.events import to_millis

    owed = owed or default_owed(cfg)
    rec = Reconciler()
    replays = ReplayTally()
    topics = cfg.kafka.topics
    until = until_ms if until_ms is not None else 2**62
    for _headers, value, where in read_window(cfg, topics.messages.name, since_ms):
        try:
            msg = decode(value, "MessageReceived")
            received = to_millis(msg["received_at"])
            if received > until or (since_ms is not None and received < since_ms):
                continue
            required = required_globals(msg, cfg)
            rec.add_message(str(msg["event_id"]), received, owed(msg), required)
        except AuditUnavailable:
            raise
        except Exception as exc:  # any type: the record is named, never a crash
            rec.add_unreadable(where, f"not a readable MessageReceived: {_why(exc)}")
            continue
        fault_point("audit.mid_scan")  # outside the try: an injected fault is not a bad record
    copy_topics = [topics.journal.name, *retry_topic_names(cfg)]
    for topic in copy_topics:
        is_journal = topic == topics.journal.name
        for headers, value, where in read_window(cfg, topic, since_ms):
            try:
                copy = decode(value, "JournalCopy")
                if str(copy["kind"]) == "RELAY":
                    continue  # originals relayed onward are not journal copies
                if is_journal and REPLAY_HEADER in headers:
                    continue  # a dead letter re-queued by an operator, not a second emission
                if ReplayTally.is_replay(copy):
                    if is_journal:
                        replays.add_copy(copy)  # counted apart (mailjournal replay)
                    continue
                if is_journal:
                    if copy["event_id"] in rec.messages:
                        rec.add_copy(
                            copy["copy_id"],
                            copy["event_id"],
                            str(copy["kind"]),
                            str(copy.get("journal_address") or ""),
                            [str(d) for d in copy.get("directions") or ()],
                        )
                elif str(copy["kind"]) == "NDR" and copy["copy_id"] not in rec.copies:
                    rec.add_copy(copy["copy_id"], copy["event_id"], "NDR")
            except Exception as exc:
                rec.add_unreadable(where, f"not a readable JournalCopy: {_why(exc)}")
    for _headers, value, where in read_window(cfg, topics.outcomes.name, since_ms):
        try:
            out = decode(value, "DeliveryOutcome")
            if str(out["kind"]) == "RELAY":
                continue  # the relay's outcomes (originals) are not journal outcomes
            if replays.owns(str(out["copy_id"])):
                replays.add_outcome(str(out["copy_id"]), str(out["status"]), to_millis(out["at"]))
                continue
            rec.add_outcome(
                out["copy_id"],
                out["event_id"],
                str(out["kind"]),
                str(out["status"]),
                to_millis(out["at"]),
                out.get("ndr_copy_id"),
            )
        except Exception as exc:
            rec.add_unreadable(where, f"not a readable DeliveryOutcome: {_why(exc)}")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    report = rec.report(now, grace_ms, int(cfg.delivery.expiry_seconds * 1000))
    report.replays = replays.lines()
    if cfg.evidence.enabled:  # signed receipts (docs/evidence.md): name the overdue ones
        from audit.receipts import overdue, receipted_events

        receipted = receipted_events(cfg, since_ms, read_window)
        overdue_ms = int(cfg.evidence.receipt_overdue_seconds * 1000)
        report.gaps.extend(overdue(rec, receipted, now, overdue_ms))
    return report


def _why(exc: BaseException) -> str:
    """An exception as one line (its text may quote the record: no line breaks, bounded)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def publish_metrics(report: AuditReport) -> None:
    from prometheus_client import Gauge

    gauges = _audit_gauges(Gauge)
    gauges["messages"].set(report.messages)
    by_kind = Counter(g.kind for g in report.gaps)
    for kind in GAP_KINDS:
        gauges["gaps"].labels(kind=kind).set(by_kind.get(kind, 0))
    for state in ("DELIVERED", "NDR_SENT", "DEAD_LETTERED", "RETRYING", "IN_FLIGHT"):
        gauges["copies"].labels(state=state.lower()).set(report.states.get(state, 0))
    gauges["duplicates"].set(len(report.duplicates))
    gauges["last_run"].set_to_current_time()


_GAUGES: dict[str, Any] = {}


def _failed_runs() -> Any:
    from prometheus_client import Gauge

    return _audit_gauges(Gauge)["failed"]


def _audit_gauges(gauge: Any) -> dict[str, Any]:
    from prometheus_client import Counter as PromCounter

    if not _GAUGES:
        _GAUGES.update(
            messages=gauge("mailjournal_audit_messages", "Accepted messages in the audit window"),
            gaps=gauge("mailjournal_audit_gaps", "Gaps found by the last audit", ["kind"]),
            copies=gauge("mailjournal_audit_copies", "Journal copies by state", ["state"]),
            duplicates=gauge(
                "mailjournal_audit_duplicate_deliveries", "Copies delivered more than once"
            ),
            last_run=gauge(
                "mailjournal_audit_last_run_timestamp_seconds", "When the last audit finished"
            ),
            failed=PromCounter(
                "mailjournal_audit_failed_runs", "Runs of a serving audit that could not finish"
            ),
        )
    return _GAUGES


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--since", help="ISO time or age (e.g. 24h); default: everything retained")
    parser.add_argument("--until", help="ISO time or age; default: now")
    parser.add_argument(
        "--grace",
        type=float,
        default=300.0,
        help="seconds a message may take through the pipeline before its absence is a gap",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--strict-duplicates", action="store_true")
    parser.add_argument(
        "--metrics-port", type=int, help="serve the results as Prometheus metrics on this port"
    )
    parser.add_argument(
        "--interval", type=float, help="with --metrics-port: re-run every INTERVAL seconds"
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cfg = load_config_or_report(args.config, stages=("audit",))
    if cfg is None:
        return EXIT_CONFIG
    if args.metrics_port is not None:
        from mailjournal.metrics import serve_metrics

        serve_metrics(cfg.metrics.host, args.metrics_port)
        _failed_runs()  # served as 0 from the start
    while True:
        try:
            report = run_audit(
                cfg,
                since_ms=parse_time(args.since),
                until_ms=parse_time(args.until),
                grace_ms=int(args.grace * 1000),
            )
        except Exception as exc:  # Kafka or the directory: no verdict, and no traceback
            print(f"audit: cannot finish: {_why(exc)}", file=sys.stderr)
            if not args.interval:
                return EXIT_NO_VERDICT
            # a serving audit outlives an outage: the failure is counted, the last good
            # results stay served (their timestamp ages: MailjournalAuditStale), and it retries
            if args.metrics_port is not None:
                _failed_runs().inc()
            time.sleep(args.interval)
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "messages": report.messages,
                        "copies_owed": report.copies_owed,
                        "states": dict(report.states),
                        "gaps": [g.__dict__ for g in report.gaps],
                        "duplicates": report.duplicates,
                        "unexpected": report.unexpected,
                        "unreadable": report.unreadable,
                        "oldest_pending_ms": report.oldest_pending_ms,
                    },
                    indent=2,
                )
            )
        else:
            print(report.render())
        if args.metrics_port is not None:
            publish_metrics(report)
        if not args.interval:
            return EXIT_GAPS if report.has_gaps(args.strict_duplicates) else EXIT_OK
        time.sleep(args.interval)
