"""Moved to :mod:`mailjournal.directory.ldap` (shared with ingest); kept for old imports."""

from mailjournal.directory.ldap import *  # noqa: F403
