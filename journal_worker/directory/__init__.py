"""Directory backends for per-recipient journaling: ``file`` and ``ldap``, behind a cache."""

from __future__ import annotations

from journal_worker.directory.base import Directory, DirectoryUnavailable, Entry, resolve
from journal_worker.directory.cache import CachedDirectory
from mailjournal.config import DirectoryConfig

__all__ = [
    "CachedDirectory",
    "Directory",
    "DirectoryUnavailable",
    "Entry",
    "make_directory",
    "resolve",
]


def make_directory(cfg: DirectoryConfig) -> Directory | None:
    """The configured backend, or None for ``backend = "none"``. LDAP sits behind the cache;
    the file backend is an in-memory index already, and a cache would only delay its reloads."""
    if cfg.backend == "file":
        from journal_worker.directory.file import FileDirectory

        assert cfg.file is not None
        return FileDirectory(cfg.file.path)
    if cfg.backend == "ldap":
        from journal_worker.directory.ldap import LdapDirectory

        assert cfg.ldap is not None
        return CachedDirectory(
            LdapDirectory(cfg.ldap),
            cfg.cache_ttl_seconds,
            cfg.negative_ttl_seconds,
            cfg.cache_size,
        )
    return None
