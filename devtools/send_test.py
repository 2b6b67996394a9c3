"""``mailjournal send-test``: send one inbound and one outbound example message to ingest — the
same as the README's swaks example, for machines without swaks."""

from __future__ import annotations

import argparse
import email.policy
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid

from mailjournal.config import load_config_or_report
from mailjournal.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK


def examples(domain: str) -> list[tuple[str, str, str]]:
    """(sender, recipient, subject) for an inbound and an outbound message."""
    return [
        ("partner@external.example", f"alice@{domain}", "inbound test: from a partner to Alice"),
        (f"bob@{domain}", "customer@external.example", "outbound test: from Bob to a customer"),
    ]


def build(sender: str, rcpt: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    msg.set_content(f"This is a mailjournal test message.\n\n{subject}\n")
    return msg


def _send_one(smtp: smtplib.SMTP, sender: str, rcpt: str, subject: str) -> tuple[int, bytes]:
    """MAIL, RCPT, DATA, stopping at the first refusal (an error names the step)."""
    code, reply = smtp.mail(sender)
    if code >= 400:
        raise smtplib.SMTPResponseException(code, f"MAIL: {reply.decode()}")
    code, reply = smtp.rcpt(rcpt)
    if code >= 400:
        raise smtplib.SMTPResponseException(code, f"RCPT: {reply.decode()}")
    code, reply = smtp.data(build(sender, rcpt, subject).as_bytes(policy=email.policy.SMTP))
    if code >= 400:
        raise smtplib.SMTPResponseException(code, f"DATA: {reply.decode()}")
    return code, reply


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/mailjournal.example.toml")
    parser.add_argument("--server", help="host:port of ingest (default: first listener)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.server:
        host, _, port_s = args.server.rpartition(":")
        port = int(port_s)
    elif cfg.ingest.listeners:
        host, port = cfg.ingest.listeners[0].host, cfg.ingest.listeners[0].port
    else:
        print("no ingest listener configured; pass --server host:port", file=sys.stderr)
        return EXIT_CONFIG
    domain = cfg.organization.accepted_domains[0]
    failed = 0
    # the outbound message comes from a trusted network (loopback is trusted in the example)
    for sender, rcpt, subject in examples(domain):
        try:
            with smtplib.SMTP(host, port, timeout=30) as smtp:
                smtp.ehlo("send-test.localdomain")
                code, reply = _send_one(smtp, sender, rcpt, subject)
                print(f"sent {sender} -> {rcpt}: {code} {reply.decode()}")
        except (smtplib.SMTPException, OSError) as exc:
            failed += 1
            print(f"FAILED {sender} -> {rcpt}: {exc}", file=sys.stderr)
    return EXIT_FATAL if failed else EXIT_OK
