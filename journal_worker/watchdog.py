"""The journal worker's watchdog: a process whose Kafka transaction call hangs exits.

Every transactional call has a timeout; one that has not returned well after it is stuck inside
librdkafka, where no thread of ours can interrupt it. So the process exits with
:data:`~mailjournal.exits.EXIT_STUCK`: the supervisor (or Kubernetes) starts a fresh instance, and
the transaction coordinator aborts the open transaction after ``transaction.timeout.ms``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from journal_worker.worker import TXN_CALL_TIMEOUT_SECONDS, JournalWorker
from mailjournal.exits import EXIT_STUCK

log = logging.getLogger("mailjournal.journal")

CHECK_SECONDS = 5
STUCK_AFTER_SECONDS = TXN_CALL_TIMEOUT_SECONDS + 30


def start_watchdog(worker: JournalWorker) -> None:
    def watch() -> None:
        while True:
            time.sleep(CHECK_SECONDS)
            stuck = worker.stuck_seconds()
            if stuck > STUCK_AFTER_SECONDS:
                log.critical("a Kafka transaction call is stuck for %.0f s: exiting", stuck)
                logging.shutdown()
                os._exit(EXIT_STUCK)

    threading.Thread(target=watch, name="journal-watchdog", daemon=True).start()
