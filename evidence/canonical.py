"""The canonical form of an evidence record: what is signed and what is hashed.

Canonical JSON: keys sorted, no white space, non-ASCII kept as UTF-8. Evidence records hold only
strings, integers, booleans, null, lists and nested records (no floats, no bytes, no logical
types), so the Avro form on Kafka and the JSON form in a bundle are the same values and give the
same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE = "signature"
GENESIS = "0" * 64  # prev_hash of a chain's first receipt


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of ``record`` (every field, the signature included)."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def signed_bytes(record: Mapping[str, Any]) -> bytes:
    """What a signature covers: the canonical form of every field but the signature."""
    return canonical({k: v for k, v in record.items() if k != SIGNATURE})


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical form of the whole record: the next receipt's prev_hash."""
    return hashlib.sha256(canonical(record)).hexdigest()
