"""Directory backends for per-recipient journaling: file, LDAP against a real slapd, cache."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from journal_worker.decide import lookup_key
from journal_worker.lookups import make_directory, resolve
from mailjournal.addresses import key
from mailjournal.config import DirectoryConfig, LdapDirectoryConfig
from mailjournal.directory import CachedDirectory, DirectoryUnavailable, Entry
from mailjournal.directory.file import FileDirectory
from mailjournal.directory.ldap import LdapDirectory, build_filter
from tests.fixtures.ldap import ATTRIBUTE, Slapd

ATTR = ATTRIBUTE

# -- file -------------------------------------------------------------------------------------

TOML = """
["alice@corp.example"]
extensionAttribute10 = "sup@corp.example"
aliases = ["a.smith@corp.example"]

["Bob@Corp.Example"]
EXTENSIONATTRIBUTE10 = ["j1@corp.example", "j2@corp.example"]
proxyAddresses = ["SMTP:bob@corp.example", "smtp:robert@corp.example", "x400:c=us"]

["carol@corp.example"]
department = "sales"
"""

JSON = """{"alice@corp.example": {"extensionAttribute10": "sup@corp.example",
                                  "aliases": ["a.smith@corp.example"]}}"""

CSV = """mail,extensionAttribute10,aliases
alice@corp.example,sup@corp.example,a.smith@corp.example
bob@corp.example,j1@corp.example; j2@corp.example,
"""


def file_dir(tmp_path: Path, name: str, text: str) -> FileDirectory:
    path = tmp_path / name
    path.write_text(text)
    return FileDirectory(path, check_interval=0)


def one(directory: object, address: str) -> Entry | None:
    return directory.lookup_many([address], [ATTR])[key(address)]  # type: ignore[attr-defined]


def test_file_toml_entries_aliases_and_case(tmp_path: Path) -> None:
    d = file_dir(tmp_path, "dir.toml", TOML)
    assert one(d, "alice@corp.example") == {"extensionattribute10": ["sup@corp.example"]}
    assert one(d, "A.Smith@CORP.example") == {"extensionattribute10": ["sup@corp.example"]}
    assert one(d, "bob@corp.example") == {
        "extensionattribute10": ["j1@corp.example", "j2@corp.example"]
    }
    assert one(d, "robert@corp.example") == one(d, "bob@corp.example")
    assert one(d, "carol@corp.example") == {}  # an entry without the attribute
    assert one(d, "nobody@corp.example") is None  # no entry


@pytest.mark.parametrize(("name", "text"), [("dir.json", JSON), ("dir.csv", CSV)])
def test_file_json_and_csv(tmp_path: Path, name: str, text: str) -> None:
    d = file_dir(tmp_path, name, text)
    assert one(d, "a.smith@corp.example") == {"extensionattribute10": ["sup@corp.example"]}
    if name.endswith(".csv"):
        assert one(d, "bob@corp.example") == {
            "extensionattribute10": ["j1@corp.example", "j2@corp.example"]
        }


def test_file_is_reloaded_on_change_and_keeps_last_good_contents(tmp_path: Path) -> None:
    d = file_dir(tmp_path, "dir.toml", TOML)
    assert one(d, "alice@corp.example") == {"extensionattribute10": ["sup@corp.example"]}
    path = tmp_path / "dir.toml"
    path.write_text('["alice@corp.example"]\nextensionAttribute10 = "new@corp.example"\n')
    assert one(d, "alice@corp.example") == {"extensionattribute10": ["new@corp.example"]}
    path.write_text('["alice@corp.example"\nbroken')  # a half-written file
    assert one(d, "alice@corp.example") == {"extensionattribute10": ["new@corp.example"]}
    path.write_text("")
    assert one(d, "alice@corp.example") is None  # a valid empty directory is believed


def test_file_missing_at_start_is_an_outage_not_an_empty_directory(tmp_path: Path) -> None:
    d = FileDirectory(tmp_path / "missing.toml", check_interval=0)
    with pytest.raises(DirectoryUnavailable):
        one(d, "alice@corp.example")
    (tmp_path / "missing.toml").write_text(TOML)
    assert one(d, "alice@corp.example") is not None


def test_resolve_answers_decide_lookups(tmp_path: Path) -> None:
    d = file_dir(tmp_path, "dir.toml", TOML)
    answers = resolve(d, [(ATTR, "alice@corp.example"), (ATTR, "nobody@corp.example")])
    assert answers == {
        lookup_key(ATTR, "alice@corp.example"): ["sup@corp.example"],
        lookup_key(ATTR, "nobody@corp.example"): [],
    }


# -- cache ------------------------------------------------------------------------------------


class CountingDirectory:
    backend = "test"

    def __init__(self, data: dict[str, Entry]):
        self.data = data
        self.calls: list[str] = []
        self.down = False

    def lookup_many(
        self, addresses: Sequence[str], attributes: Sequence[str]
    ) -> dict[str, Entry | None]:
        if self.down:
            raise DirectoryUnavailable("down")
        self.calls.extend(addresses)
        return {key(a): self.data.get(key(a)) for a in addresses}

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttl_negative_ttl_and_errors() -> None:
    inner = CountingDirectory({"a@x.example": {ATTR.casefold(): ["j@x.example"]}})
    clock = Clock()
    cache = CachedDirectory(inner, 60, 5, 100, clock=clock)
    for _ in range(3):
        cache.lookup_many(["a@x.example", "none@x.example"], [ATTR])
    assert inner.calls == ["a@x.example", "none@x.example"]
    clock.now += 6  # the negative entry expired, the positive one not
    cache.lookup_many(["a@x.example", "none@x.example"], [ATTR])
    assert inner.calls[2:] == ["none@x.example"]
    clock.now += 60
    inner.down = True
    with pytest.raises(DirectoryUnavailable):
        cache.lookup_many(["a@x.example"], [ATTR])  # expired: must ask, and the error shows
    inner.down = False
    assert cache.lookup_many(["A@X.example"], [ATTR]) == {
        "a@x.example": {ATTR.casefold(): ["j@x.example"]}
    }


def test_cache_size_bound_evicts_least_recently_used() -> None:
    inner = CountingDirectory({})
    cache = CachedDirectory(inner, 60, 60, 2, clock=Clock())
    cache.lookup_many(["a@x"], [ATTR])
    cache.lookup_many(["b@x"], [ATTR])
    cache.lookup_many(["a@x"], [ATTR])  # a is now the most recent
    cache.lookup_many(["c@x"], [ATTR])  # evicts b
    assert len(cache) == 2
    inner.calls.clear()
    cache.lookup_many(["a@x", "b@x", "c@x"], [ATTR])
    assert inner.calls == ["b@x"]


# -- LDAP against a real slapd ----------------------------------------------------------------


def ldap_dir(server: Slapd, **over: object) -> LdapDirectory:
    return LdapDirectory(LdapDirectoryConfig(**server.directory_config(**over)["ldap"]))  # type: ignore[arg-type]


def test_filter_escapes_the_address() -> None:
    assert build_filter("(mail={address})", "a*)(uid=*@x") == r"(mail=a\2a\29\28uid=\2a@x)"


def test_ldap_lookups_aliases_and_missing(slapd: Slapd) -> None:
    slapd.add_user("alice", "alice@corp.example", journal=["sup@corp.example"])
    slapd.add_user(
        "bob",
        "bob@corp.example",
        journal=["j1@corp.example", "j2@corp.example"],
        aliases=["robert@corp.example"],
    )
    slapd.add_user("carol", "carol@corp.example")
    d = ldap_dir(slapd)
    try:
        got = d.lookup_many(
            [
                "Alice@Corp.Example",
                "robert@corp.example",
                "carol@corp.example",
                "nobody@corp.example",
                "*@corp.example",  # escaped: matches nothing, never "everybody"
            ],
            [ATTR],
        )
        assert got == {
            "alice@corp.example": {ATTR.casefold(): ["sup@corp.example"]},
            "robert@corp.example": {ATTR.casefold(): ["j1@corp.example", "j2@corp.example"]},
            "carol@corp.example": {},
            "nobody@corp.example": None,
            "*@corp.example": None,
        }
    finally:
        d.close()


def test_ldap_bind_password_from_env_and_wrong_password(
    slapd: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    slapd.add_user("alice", "alice@corp.example", journal=["sup@corp.example"])
    monkeypatch.setenv("TEST_LDAP_PW", "journal-secret")
    d = ldap_dir(slapd, password_file=None, password_env="TEST_LDAP_PW")
    assert one(d, "alice@corp.example") == {ATTR.casefold(): ["sup@corp.example"]}
    d.close()
    monkeypatch.setenv("TEST_LDAP_PW", "wrong")
    d = ldap_dir(slapd, password_file=None, password_env="TEST_LDAP_PW")
    with pytest.raises(DirectoryUnavailable, match="bind"):
        one(d, "alice@corp.example")
    d.close()


def test_ldap_starttls(slapd_factory: object) -> None:
    server: Slapd = slapd_factory(tls=True)  # type: ignore[operator]
    server.add_user("alice", "alice@corp.example", journal=["sup@corp.example"])
    d = ldap_dir(server, start_tls=True, ca_file=str(server.ca_file))
    assert one(d, "alice@corp.example") == {ATTR.casefold(): ["sup@corp.example"]}
    d.close()
    # a server certificate we cannot verify is an outage, never a silent plaintext fallback
    d = ldap_dir(server, start_tls=True, ca_file=None)
    with pytest.raises(DirectoryUnavailable):
        one(d, "alice@corp.example")
    d.close()


def test_ldap_outage_and_recovery_and_timeout(slapd: Slapd) -> None:
    slapd.add_user("alice", "alice@corp.example", journal=["sup@corp.example"])
    d = ldap_dir(slapd, timeout_seconds=1.0)
    try:
        assert one(d, "alice@corp.example") is not None  # leaves a pooled connection
        slapd.stop()
        with pytest.raises(DirectoryUnavailable):
            one(d, "alice@corp.example")
        slapd.start()
        assert one(d, "alice@corp.example") == {ATTR.casefold(): ["sup@corp.example"]}
        # a hung server: the lookup fails within the timeout instead of blocking the worker
        assert slapd.proc is not None
        os.kill(slapd.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable):
                one(d, "alice@corp.example")
            assert time.monotonic() - started < 6
        finally:
            os.kill(slapd.proc.pid, signal.SIGCONT)
        assert one(d, "alice@corp.example") is not None
    finally:
        d.close()


def test_ldap_cache_expiry_sees_changes(slapd: Slapd) -> None:
    slapd.add_user("alice", "alice@corp.example", journal=["old@corp.example"])
    cfg = DirectoryConfig.model_validate(
        {**slapd.directory_config(), "cache_ttl_seconds": 0.5, "negative_ttl_seconds": 0.5}
    )
    d = make_directory(cfg)
    assert isinstance(d, CachedDirectory)
    try:
        assert one(d, "alice@corp.example") == {ATTR.casefold(): ["old@corp.example"]}
        assert one(d, "dave@corp.example") is None
        slapd.set_journal("alice", "new@corp.example")
        slapd.add_user("dave", "dave@corp.example", journal=["sup@corp.example"])
        # within the TTL the cached answers stand
        assert one(d, "alice@corp.example") == {ATTR.casefold(): ["old@corp.example"]}
        assert one(d, "dave@corp.example") is None
        time.sleep(0.6)  # not synchronisation: the cache TTL passing is what is tested
        assert one(d, "alice@corp.example") == {ATTR.casefold(): ["new@corp.example"]}
        assert one(d, "dave@corp.example") == {ATTR.casefold(): ["sup@corp.example"]}
    finally:
        d.close()
