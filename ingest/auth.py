"""SMTP AUTH credentials: a file of salted scrypt hashes, one ``user:hash`` per line.

::

    # mailjournal ingest hash-password --user relay1   (prints the line to add)
    relay1:$scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>

Blank lines and ``#`` comments are ignored. The file is re-read when its modification time
changes, so credentials rotate without a restart. Verification costs ~50 ms of CPU by design; the
server runs it on a :class:`PasswordChecker`, a small thread pool of its own, so the event loop
keeps serving other sessions and a flood of AUTH attempts queues there, never in front of the
threads that hash accepted messages. An unknown user costs the same as a wrong password (no user
enumeration by timing).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCHEME = "scrypt"
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**14, 8, 1
_DKLEN = 32
_MAXMEM = 64 * 1024 * 1024


class CredentialsError(ValueError):
    """A credentials file or hash that cannot be used."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    salt = os.urandom(16)
    dk = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN
    )
    return f"${SCHEME}$n={n},r={r},p={p}${_b64(salt)}${_b64(dk)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        empty, scheme, params, salt, dk = encoded.split("$")
        if empty or scheme != SCHEME:
            raise ValueError
        kv = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(kv["n"]), int(kv["r"]), int(kv["p"])
        return n, r, p, _unb64(salt), _unb64(dk)
    except (ValueError, KeyError) as exc:
        raise CredentialsError(f"not a {SCHEME} hash made by hash-password") from exc


def verify_password(password: str | bytes, encoded: str) -> bool:
    n, r, p, salt, expected = _parse_hash(encoded)
    secret = password.encode("utf-8") if isinstance(password, str) else password
    dk = hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(dk, expected)


def parse_credentials(text: str, source: str = "credentials") -> dict[str, str]:
    users: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user:
            raise CredentialsError(f"{source}:{lineno}: expected user:hash")
        _parse_hash(encoded)  # refuse a bad line at load, not at the first login
        users[user] = encoded
    return users


class Credentials:
    """The users of one credentials file, re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._users: dict[str, str] = {}
        self._dummy = hash_password(os.urandom(8).hex())
        self._load()

    def _load(self) -> None:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                raise CredentialsError(f"{self.path}: no such credentials file") from None
            if mtime != self._mtime:
                self._users = parse_credentials(self.path.read_text("utf-8"), str(self.path))
                self._mtime = mtime

    def check(self, user: str | bytes, password: str | bytes) -> str | None:
        """The user name when the password is right, else None. Blocking (scrypt)."""
        self._load()
        name = user.decode("utf-8", "replace") if isinstance(user, bytes) else user
        encoded = self._users.get(name)
        ok = verify_password(password, encoded or self._dummy)
        return name if ok and encoded is not None else None


class PasswordChecker:
    """The threads that run :meth:`Credentials.check` for one ingest process."""

    THREAD_PREFIX = "mailjournal-auth"

    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=self.THREAD_PREFIX)

    async def check(
        self, credentials: Credentials, user: str | bytes, password: str | bytes
    ) -> str | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, credentials.check, user, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
