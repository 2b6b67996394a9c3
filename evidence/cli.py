"""``mailjournal evidence``: verify the receipt chains, export a bundle, verify a bundle.

``verify --since --until`` reads the topics: every signature, link and checkpoint, and that
every accepted message in the window has a receipt listing the copies emitted for it.
``export --since --until --out DIR`` writes a self-contained bundle; ``verify --bundle DIR``
checks one with nothing else (no Kafka, no configuration). Exit 0 when everything verifies,
1 with each problem named, 2 when no verdict could be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evidence.keys import Keyring, key_id, load_public_key, public_from_pem, public_pem
from evidence.verify import Problem, Verdict, coverage_problems, verify_chains
from mailjournal.config import Config, add_config_argument, load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_GAPS, EXIT_NO_VERDICT, EXIT_OK

README = """# Journal evidence bundle

Exported by `mailjournal evidence export` on {exported}. Window: receipts written from {since}
to {until} (UTC).

| file | what |
|---|---|
| `receipts.jsonl` | one signed journal receipt per line, per chain (partition) in the order written |
| `anchors.jsonl` | per chain, the last receipt written before the window (the first receipt links to it) |
| `checkpoints.jsonl` | signed statements of every chain's head, taken periodically |
| `policy.jsonl` | signed records of each change of the journaling policy (its digest and content) |
| `keys.json` | the Ed25519 public keys (PEM) by key id |
| `manifest.json` | the window |

## Verifying

    mailjournal evidence verify --bundle DIR

needs nothing but this directory. By hand, for each record: remove `signature`, serialise the
rest as JSON with keys sorted, no white space, UTF-8 (the *canonical form*), and check the
Ed25519 signature (base64) with the public key named by `key_id`. For each chain, receipt
`seq` n+1 must carry `prev_hash` = SHA-256 (hex) of the canonical form of receipt n, signature
included; seq 0 links to 64 zeros. Every checkpoint head (partition, seq, hash) written inside
the window must be present with that hash: receipts deleted, reordered, changed, re-signed or
dropped from the end before a checkpoint all fail one of these checks.

Before trusting `keys.json`, compare its key ids with the ones your organisation published
(`mailjournal evidence public-key`): a forger who replaces the receipts can replace the keys.
"""


def _when(value: str | None, default: int) -> int:
    if not value:
        return default
    if value[-1] in "smhd" and value[:-1].isdigit():
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
        return int((time.time() - int(value[:-1]) * unit) * 1000)
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    verify = sub.add_parser("verify", help="verify the receipt chains (topics or a bundle)")
    verify.add_argument("--config", default=None, help="configuration file (not with --bundle)")
    verify.add_argument("--bundle", type=Path, help="verify an exported bundle, offline")
    verify.add_argument("--since", help="ISO time or age (e.g. 24h); default: everything")
    verify.add_argument("--until", help="ISO time or age; default: now")
    verify.add_argument(
        "--grace", type=float, default=300.0, help="seconds a message may wait for its receipt"
    )
    export = sub.add_parser("export", help="write a self-contained evidence bundle")
    add_config_argument(export)
    export.add_argument("--since")
    export.add_argument("--until")
    export.add_argument("--out", type=Path, required=True)
    key = sub.add_parser("public-key", help="print the signing key's id and public key (PEM)")
    add_config_argument(key)


def _keyring(cfg: Config) -> Keyring:
    ev = cfg.evidence
    files = ([ev.signing_key_file] if ev.signing_key_file else []) + list(ev.verify_key_files)
    return Keyring.of(load_public_key(p) for p in files)


def _evidence_records(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from evidence.read import read_all
    from schemas import decode_with_name

    checkpoints: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    for _p, _o, _k, value in read_all(cfg, cfg.kafka.topics.evidence.name):
        if value is None:
            continue
        name, record = decode_with_name(value)
        (checkpoints if name == "JournalCheckpoint" else policies).append(record)
    return checkpoints, policies


def _window(
    cfg: Config, since: int, until: int
) -> tuple[
    list[dict[str, Any]], dict[int, dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]
]:
    from evidence.read import read_window

    receipts, anchors = read_window(cfg, cfg.kafka.topics.receipts.name, "JournalReceipt", since)
    checkpoints, policies = _evidence_records(cfg)
    return (
        receipts,
        anchors,
        [c for c in checkpoints if since <= int(c["at"]) <= until],
        policies,
    )


def _policy_problems(policies: list[dict[str, Any]], keyring: Keyring) -> list[Problem]:
    out = []
    for change in policies:
        why = keyring.problem(change)
        if why:
            out.append(Problem("bad-signature", f"policy change {change.get('change_id')}", why))
    return out


def _coverage(
    cfg: Config, since: int, until: int, receipts: list[dict[str, Any]], grace_ms: int
) -> tuple[int, list[Problem]]:
    from evidence.read import read_all
    from schemas import SchemaError, default_codec
    from schemas.events import to_millis

    codec = default_codec()
    owed: dict[str, set[str]] = {}
    young: set[str] = set()
    now = int(time.time() * 1000)
    for _p, _o, _k, value in read_all(cfg, cfg.kafka.topics.messages.name):
        if value is None:
            continue
        try:
            msg = codec.decode(value, "MessageReceived")
        except SchemaError:
            continue  # unreadable: the audit names it; no receipt can be owed for it
        received = to_millis(msg["received_at"])
        if since <= received <= until:
            owed[str(msg["event_id"])] = set()
            if received > now - grace_ms:
                young.add(str(msg["event_id"]))
    for _p, _o, _k, value in read_all(cfg, cfg.kafka.topics.journal.name):
        if value is None:
            continue
        try:
            copy = codec.decode(value, "JournalCopy")
        except SchemaError:
            continue
        # a replay's copies (mailjournal replay) are extra, not what was owed when the message
        # came: receipts cover the live obligation; the audit counts replays apart
        if (
            str(copy["kind"]) == "JOURNAL"
            and not copy.get("replay_run")
            and copy["event_id"] in owed
        ):
            owed[str(copy["event_id"])].add(str(copy["copy_id"]))
    by_event = {str(r["event_id"]): r for r in receipts}
    return len(owed), coverage_problems(owed, by_event, pending=young)


def _print(verdict: Verdict, extra: list[Problem], messages: int | None = None) -> int:
    verdict.problems = tuple([*verdict.problems, *extra])
    print(verdict.render())
    if messages is not None:
        print(f"accepted messages in the window: {messages}")
    return EXIT_OK if verdict.ok else EXIT_GAPS


def _load_bundle(path: Path) -> dict[str, Any]:
    def lines(name: str) -> list[dict[str, Any]]:
        f = path / name
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]

    return {
        "receipts": lines("receipts.jsonl"),
        "anchors": {int(r["partition"]): r for r in lines("anchors.jsonl")},
        "checkpoints": lines("checkpoints.jsonl"),
        "policies": lines("policy.jsonl"),
        "keys": json.loads((path / "keys.json").read_text(encoding="utf-8")),
        "manifest": json.loads((path / "manifest.json").read_text(encoding="utf-8")),
    }


def verify_bundle(path: Path) -> int:
    try:
        bundle = _load_bundle(path)
        keyring = Keyring.of(public_from_pem(pem) for pem in bundle["keys"].values())
    except (OSError, ValueError, KeyError) as exc:
        print(f"evidence: {path} is not a readable bundle: {exc}", file=sys.stderr)
        return EXIT_NO_VERDICT
    since = int(bundle["manifest"]["since_ms"])
    print(f"bundle {path}: window {_iso(since)} .. {_iso(int(bundle['manifest']['until_ms']))}")
    verdict = verify_chains(
        bundle["receipts"],
        bundle["checkpoints"],
        keyring,
        since_ms=since,
        anchors=bundle["anchors"],
    )
    return _print(verdict, _policy_problems(bundle["policies"], keyring))


def export(cfg: Config, since: int, until: int, out: Path) -> int:
    receipts, anchors, checkpoints, policies = _window(cfg, since, until)
    receipts = [r for r in receipts if int(r["written_at"]) <= until]
    keyring = _keyring(cfg)
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
        (out / name).write_text(text, encoding="utf-8")

    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in receipts:
        by_partition[int(r["partition"])].append(r)
    write("receipts.jsonl", [r for p in sorted(by_partition) for r in by_partition[p]])
    write("anchors.jsonl", [anchors[p] for p in sorted(anchors)])
    write("checkpoints.jsonl", checkpoints)
    write("policy.jsonl", policies)
    keys = {kid: public_pem(pub) for kid, pub in keyring.keys.items()}
    (out / "keys.json").write_text(json.dumps(keys, indent=2, sort_keys=True), encoding="utf-8")
    now = int(time.time() * 1000)
    manifest = {"since_ms": since, "until_ms": until, "exported_at_ms": now}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (out / "README.md").write_text(
        README.format(exported=_iso(now), since=_iso(since), until=_iso(until)), encoding="utf-8"
    )
    print(f"exported {len(receipts)} receipts, {len(checkpoints)} checkpoints to {out}")
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    if args.action == "verify" and args.bundle is not None:
        return verify_bundle(args.bundle)
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.action == "public-key":
        from evidence.keys import load_signing_key

        assert cfg.evidence.signing_key_file is not None
        key = load_signing_key(cfg.evidence.signing_key_file)
        print(f"key id {key_id(key.public)}\n{public_pem(key.public)}", end="")
        return EXIT_OK
    now = int(time.time() * 1000)
    since, until = _when(args.since, 0), _when(args.until, now)
    try:
        if args.action == "export":
            return export(cfg, since, until, args.out)
        keyring = _keyring(cfg)
        receipts, anchors, checkpoints, policies = _window(cfg, since, until)
        in_window = [r for r in receipts if int(r["written_at"]) <= until]
        verdict = verify_chains(in_window, checkpoints, keyring, since_ms=since, anchors=anchors)
        messages, missing = _coverage(cfg, since, until, receipts, int(args.grace * 1000))
        return _print(verdict, [*_policy_problems(policies, keyring), *missing], messages)
    except Exception as exc:  # Kafka unreachable, a topic missing: no verdict, no traceback
        print(f"evidence: cannot finish: {exc}", file=sys.stderr)
        return EXIT_NO_VERDICT
