"""The directory's user lookups for ingest (issue 14): ``exists`` and ``sender_addresses`` of
the file backend, the cache's positive and negative TTL for them, and ingest's client that asks
in canonical form (subaddress cut, or the address as listed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from ingest.directory import IngestDirectory
from mailjournal.addresses import canonical
from mailjournal.directory import CachedDirectory, DirectoryUnavailable, Entry
from mailjournal.directory.file import FileDirectory

USERS = """
["Alice@corp.example"]
aliases = ["a.smith@corp.example"]
proxyAddresses = ["SMTP:alice@corp.example", "smtp:ali@corp.example", "x500:/o=corp/cn=alice"]
login = ["alice", "CORP\\\\alice"]
senders = ["team@corp.example"]

["list+sales@corp.example"]
"""


@pytest.fixture
def file_directory(tmp_path: Path) -> FileDirectory:
    path = tmp_path / "users.toml"
    path.write_text(USERS)
    return FileDirectory(path)


def test_file_exists_in_canonical_form(file_directory: FileDirectory) -> None:
    for address in ("alice@corp.example", "A.Smith@corp.example", '"ali"@CORP.example'):
        assert file_directory.exists(canonical(address, ""))
    assert not file_directory.exists(canonical("bob@corp.example", ""))
    assert not file_directory.exists(canonical("/o=corp/cn=alice", ""))  # not an SMTP alias


def test_file_sender_addresses(file_directory: FileDirectory) -> None:
    expected = [
        "Alice@corp.example",
        "a.smith@corp.example",
        "alice@corp.example",
        "ali@corp.example",
        "team@corp.example",
    ]
    assert file_directory.sender_addresses("alice") == expected
    assert file_directory.sender_addresses("corp\\ALICE") == expected  # logins fold case
    assert file_directory.sender_addresses("alice@corp.example") == expected
    assert file_directory.sender_addresses("mallory") is None


def test_ingest_client_cuts_the_subaddress_and_tries_the_listed_form(
    file_directory: FileDirectory,
) -> None:
    client = IngestDirectory(file_directory, "+")

    async def probe() -> list[bool | None]:
        return [
            await client.is_user(a)
            for a in (
                "alice+news@corp.example",
                "list+sales@corp.example",  # listed with the delimiter in it
                "list@corp.example",
                "nobody+alice@corp.example",
            )
        ]

    try:
        assert asyncio.run(probe()) == [True, True, False, False]
    finally:
        client.close()


class Users:
    """A backend that counts its calls and can be down."""

    backend = "test"

    def __init__(self, users: set[str]):
        self.users = users
        self.calls: list[str] = []
        self.down = False

    def lookup_many(
        self, addresses: Sequence[str], attributes: Sequence[str]
    ) -> dict[str, Entry | None]:
        raise NotImplementedError

    def exists(self, address: str) -> bool:
        self.calls.append(address)
        if self.down:
            raise DirectoryUnavailable("down")
        return address in self.users

    def sender_addresses(self, login: str) -> list[str] | None:
        self.calls.append(login)
        if self.down:
            raise DirectoryUnavailable("down")
        return [login + "@corp.example"] if login in self.users else None

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_answers_users_with_positive_and_negative_ttl() -> None:
    inner = Users({"a@x.example", "a"})
    clock = Clock()
    cache = CachedDirectory(inner, 60, 5, 100, clock=clock)
    for _ in range(3):
        assert cache.exists("a@x.example") and not cache.exists("b@x.example")
        assert cache.sender_addresses("a") == ["a@corp.example"]
        assert cache.sender_addresses("b") is None
    assert inner.calls == ["a@x.example", "b@x.example", "a", "b"]
    clock.now += 6  # negative answers expired, positive ones not
    inner.down = True
    assert cache.exists("a@x.example")
    with pytest.raises(DirectoryUnavailable):
        cache.exists("b@x.example")
    with pytest.raises(DirectoryUnavailable):
        cache.sender_addresses("b")
    inner.down = False
    assert not cache.exists("b@x.example")  # the outage was not cached


def test_ingest_client_reports_an_outage_as_no_answer() -> None:
    inner = Users(set())
    inner.down = True
    client = IngestDirectory(inner, "+")

    async def probe() -> tuple[bool | None, tuple[bool, list[str] | None]]:
        return await client.is_user("a@x.example"), await client.sender_addresses("a")

    try:
        assert asyncio.run(probe()) == (None, (False, None))
    finally:
        client.close()
