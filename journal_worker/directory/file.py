"""Moved to :mod:`mailjournal.directory.file` (shared with ingest); kept for old imports."""

from mailjournal.directory.file import *  # noqa: F403
