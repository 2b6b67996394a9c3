"""``mailjournal capture``: a local SMTP server that files every message it receives into a Maildir
per envelope recipient — the smart host of the one-machine run, so journal reports and NDRs can be
looked at (``var/maildir/journal-in@corp.example/new/...``).

Each stored file starts with ``Return-Path:`` (the envelope sender, ``<>`` for NDRs) and
``Delivered-To:`` (the envelope recipient), as a local delivery agent writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import mailbox
import re
import signal
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("devtools.capture")
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+=-]")


def folder_name(address: str) -> str:
    return _UNSAFE.sub("_", address.lower()) or "_"


class MaildirHandler:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._boxes: dict[str, mailbox.Maildir] = {}

    def _box(self, rcpt: str) -> mailbox.Maildir:
        name = folder_name(rcpt)
        if name not in self._boxes:
            self._boxes[name] = mailbox.Maildir(self.root / name, create=True)
        return self._boxes[name]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        sender = envelope.mail_from or ""
        for rcpt in envelope.rcpt_tos:
            head = f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode()
            key = self._box(rcpt).add(head + data)
            log.info("stored message from <%s> for %s as %s", sender, rcpt, key)
        return "250 2.0.0 Ok: stored"


async def serve(host: str, port: int, maildir: Path) -> None:
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler, enable_SMTPUTF8=True, data_size_limit=None, ident="mailjournal-capture"
        ),
        host,
        port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("capture SMTP server on %s:%d, storing into %s", host, port, maildir)
    async with server:
        await stop.wait()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:2526", help="host:port (default %(default)s)"
    )
    parser.add_argument(
        "--maildir", default="var/maildir", help="root folder (default %(default)s)"
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s capture %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host or "127.0.0.1", int(port), Path(args.maildir)))
    return 0
