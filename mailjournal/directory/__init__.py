"""Directory backends (``file``, ``ldap``) behind a cache, shared by the journal worker and
ingest. See :mod:`mailjournal.directory.base` for the protocol."""

from __future__ import annotations

from mailjournal.config import DirectoryConfig
from mailjournal.directory.base import Directory, DirectoryUnavailable, Entry
from mailjournal.directory.cache import CachedDirectory
from mailjournal.directory.metrics import DirectoryMetrics

__all__ = [
    "CachedDirectory",
    "Directory",
    "DirectoryMetrics",
    "DirectoryUnavailable",
    "Entry",
    "make_directory",
]


def make_directory(
    cfg: DirectoryConfig, metrics: DirectoryMetrics | None = None
) -> Directory | None:
    """The configured backend, or None for ``backend = "none"``. LDAP sits behind the cache;
    the file backend is an in-memory index already, and a cache would only delay its reloads."""
    if cfg.backend == "file":
        from mailjournal.directory.file import FileDirectory

        assert cfg.file is not None
        return FileDirectory(cfg.file.path, metrics=metrics)
    if cfg.backend == "ldap":
        from mailjournal.directory.ldap import LdapDirectory

        assert cfg.ldap is not None
        return CachedDirectory(
            LdapDirectory(cfg.ldap, metrics=metrics),
            cfg.cache_ttl_seconds,
            cfg.negative_ttl_seconds,
            cfg.cache_size,
            metrics=metrics,
        )
    return None
