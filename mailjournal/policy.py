"""The journaling policy in force, as one stable digest.

:func:`policy_document` picks the journaling-relevant part of the configuration -- who is
internal (accepted domains, subdomains, trusted networks, the subaddress delimiter), every
direction's switch, journal address, NDR address, per-recipient directory attribute and format,
the default format, the archive addresses and the directory backend the attributes come from --
and :func:`policy_digest` hashes its canonical JSON (keys sorted, no white space, UTF-8).
Everything else (ports, Kafka, timeouts) leaves the digest unchanged, and so does the order of
list entries that are sets by meaning (domains, networks, archive addresses). The journal worker
records the digest in every ``JournalCopy``; the receipt writer records each change of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mailjournal.config import Config

PREFIX = "sha256:"


def policy_document(config: Config) -> dict[str, Any]:
    """The journaling-relevant configuration, as plain JSON values."""
    org = config.organization
    journal = config.journal

    def direction(name: str) -> dict[str, Any]:
        d = journal.direction(name)
        return {
            "enabled": d.enabled,
            "active": d.active,
            "address": (d.address or "").lower() or None,
            "ndr_address": (d.ndr_address or "").lower() or None,
            "recipient_attribute": d.recipient_attribute,
            "format": str(journal.format_for(name)),
        }

    directory = config.directory
    return {
        "version": 1,
        "accepted_domains": sorted({str(d).lower() for d in org.accepted_domains}),
        "include_subdomains": org.include_subdomains,
        "trusted_networks": sorted({str(n) for n in org.trusted_networks}),
        "recipient_delimiter": org.recipient_delimiter,
        "format": str(journal.format),
        "inbound": direction("inbound"),
        "outbound": direction("outbound"),
        "internal": direction("internal"),
        "archive_addresses": sorted({a.lower() for a in journal.archive_addresses}),
        "directory": directory.backend,
    }


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def policy_digest(config: Config) -> str:
    """``sha256:<hex>`` of the canonical JSON of :func:`policy_document`."""
    data = canonical_json(policy_document(config)).encode("utf-8")
    return PREFIX + hashlib.sha256(data).hexdigest()
