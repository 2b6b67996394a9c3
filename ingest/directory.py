"""Ingest's directory client: "is this a user?" for recipient verification and "which addresses
may this login send as?" for sender-login binding, off the event loop.

The backends (file, LDAP behind the TTL cache, positive and negative answers cached) are the
shared ones of :mod:`mailjournal.directory`. A lookup that cannot be answered returns None: the
caller answers ``451 4.4.3`` and never accepts blindly.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from ingest import metrics as m
from mailjournal.addresses import canonical
from mailjournal.config import Config
from mailjournal.directory import Directory, DirectoryMetrics, DirectoryUnavailable, make_directory

log = logging.getLogger(__name__)

METRICS = DirectoryMetrics(m.DIRECTORY_LOOKUPS, m.DIRECTORY_LATENCY, m.DIRECTORY_RELOADS)


class IngestDirectory:
    def __init__(self, directory: Directory, delimiter: str, threads: int = 4):
        self.directory = directory
        self.delimiter = delimiter
        # its own threads: a slow directory must not hold up message hashing or AUTH checks
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="ingest-directory")

    @classmethod
    def from_config(cls, config: Config) -> IngestDirectory | None:
        ingest = config.ingest
        binds = ingest.sender_login_binding and any(lst.auth for lst in ingest.listeners)
        if not (ingest.verify_recipients or binds):
            return None
        directory = make_directory(config.directory, METRICS)
        if directory is None:
            return None  # config validation requires one where it is needed
        return cls(directory, config.organization.recipient_delimiter)

    def _is_user(self, address: str) -> bool:
        # user+ext is user's; a listed address that contains the delimiter is found as is
        cut = canonical(address, self.delimiter)
        if self.directory.exists(cut):
            return True
        whole = canonical(address, "")
        return whole != cut and self.directory.exists(whole)

    async def is_user(self, address: str) -> bool | None:
        """True or False; None when the directory cannot answer."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._is_user, address)
        except DirectoryUnavailable as exc:
            log.warning("recipient verification: directory unavailable: %s", exc)
            return None

    async def sender_addresses(self, login: str) -> tuple[bool, list[str] | None]:
        """(answered, addresses); addresses None when the directory has no such login."""
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(
                self._executor, self.directory.sender_addresses, login
            )
        except DirectoryUnavailable as exc:
            log.warning("sender-login binding: directory unavailable: %s", exc)
            return False, None
        return True, found

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.directory.close()
