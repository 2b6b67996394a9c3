"""The ``mailjournal`` command line.

Each subcommand lives in the module that owns it; that module exposes
``configure_parser(parser: argparse.ArgumentParser) -> None`` and ``main(args) -> int``.
They are imported lazily so ``mailjournal config check`` does not load Kafka or SMTP code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mailjournal.exits import EXIT_INTERRUPTED

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("mailjournal.config_cli", "check a configuration file"),
    "kafka-local": (
        "devtools.kafka_local",
        "run a real local Apache Kafka (KRaft) for dev/tests",
    ),
    "topics": ("mailjournal.topics", "create missing topics and report drift"),
    "ingest": ("ingest.main", "run the SMTP ingest stage"),
    "journal": ("journal_worker.main", "run the journal worker stage"),
    "deliver": ("delivery.main", "run the delivery stage"),
    "relay": ("relay.main", "run the relay stage (inline mode: originals onward)"),
    "dlq": ("delivery.dlq", "list or replay dead letters"),
    "replay": ("journal_worker.replay_main", "re-journal the accepted messages of a past window"),
    "run": ("devtools.supervisor", "run the whole pipeline on one machine"),
    "receipts": ("evidence.main", "run the receipt writer stage (signed journal receipts)"),
    "evidence": ("evidence.cli", "verify the receipt chains; export and verify evidence bundles"),
    "audit": ("audit.reconcile", "reconcile accepted messages against journal outcomes"),
    "send-test": ("devtools.send_test", "send example inbound and outbound test messages"),
    "capture": ("devtools.capture", "run a local SMTP server that stores mail in a Maildir"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailjournal", description="Mail journaling pipeline on Apache Kafka."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            module = importlib.import_module(module_name)
            module.configure_parser(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # import only the chosen command's module
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
