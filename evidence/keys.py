"""Ed25519 signing keys of the evidence records: a key file like the stamp key, with rotation.

The private key is a PEM (PKCS #8) file, owner-only; its *key id* is the first 16 hex digits
of the SHA-256 of the raw 32-byte public key, written into every record it signs. Rotation: a
new key file is configured as ``evidence.signing_key_file`` and the old key's public half
(``mailjournal evidence public-key``) goes on ``evidence.verify_key_files``; records keep the
id of the key that signed them, so old and new records verify side by side.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evidence.canonical import SIGNATURE, signed_bytes


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key."""


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(public)).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``record`` with this key's id and its signature over the canonical form."""
        out = {**record, "key_id": self.key_id, SIGNATURE: ""}
        out[SIGNATURE] = base64.b64encode(self.private.sign(signed_bytes(out))).decode("ascii")
        return out

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())


def create_key_file(path: Path) -> bool:
    """Write a new Ed25519 key (PEM, mode 0600) to ``path`` unless a file is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return True


def load_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return SigningKey(key)


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file (PEM), or the public half of a private key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        if b"PRIVATE KEY" in data:
            return load_signing_key(path).public
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def public_from_pem(pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Keyring:
    """The public keys a verifier trusts, by key id."""

    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def of(cls, publics: Iterable[Ed25519PublicKey]) -> Keyring:
        return cls({key_id(p): p for p in publics})

    def problem(self, record: Mapping[str, Any]) -> str | None:
        """None when ``record``'s signature verifies under the key it names; else why not."""
        kid = record.get("key_id")
        public = self.keys.get(str(kid))
        if public is None:
            return f"signed with an unknown key {kid!r} (trusted: {', '.join(sorted(self.keys))})"
        try:
            signature = base64.b64decode(str(record.get(SIGNATURE, "")), validate=True)
            public.verify(signature, signed_bytes(record))
        except (InvalidSignature, ValueError):
            return f"bad signature (key {kid}): the record was changed after signing"
        return None
