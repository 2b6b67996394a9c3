"""Moved to :mod:`mailjournal.directory.cache` (shared with ingest); kept for old imports."""

from mailjournal.directory.cache import *  # noqa: F403
