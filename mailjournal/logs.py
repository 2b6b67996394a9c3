"""Logging set-up shared by the stages: plain text for people, JSON lines for log pipelines."""

from __future__ import annotations

import logging
import re
import sys

from mailjournal.config import LoggingConfig


def setup_logging(cfg: LoggingConfig | None = None, *, stage: str = "mailjournal") -> None:
    cfg = cfg or LoggingConfig()
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"stage": stage},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s {stage}[%(process)d] %(levelname)s %(name)s: %(message)s"
            )
        )
    handler.addFilter(RoutineLibrdkafkaWarnings())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)


# librdkafka's own log, routed into Python logging (mailjournal.kafka gives every client this
# logger) so that it has the stage's format (text or JSON) and level instead of raw ``%4|...``
# lines on stderr. The logger is served by the client's poll/consume, as the stages do anyway.
LIBRDKAFKA_LOGGER = "librdkafka"

# Warnings librdkafka logs during a normal start and retries by itself: a broker's transaction
# or group coordinator still loading its state, a new topic's leader not yet elected. A real
# failure still surfaces as an error (a failed call, an error callback, its own ERROR lines), so
# these are INFO here: a first run reads clean, and operators' WARNING alerts stay meaningful.
_ROUTINE_WARNING = re.compile(
    r"Coordinator load in progress|Coordinator not available|Not coordinator"
    r"|Leader not available|Unknown topic or partition"
)


# how confluent-kafka hands a librdkafka line to a Python logger: "<FACILITY> [<client name>] ..."
_LIBRDKAFKA_LINE = re.compile(r"[A-Z0-9_]+ \[[^\]]*#(producer|consumer)-\d+\] ")


class RoutineLibrdkafkaWarnings(logging.Filter):
    """Demotes librdkafka's self-retried start-up warnings to INFO (dropped below that level),
    on whichever logger a client was given (the stages' handler carries this filter too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (
            record.levelno == logging.WARNING
            and _LIBRDKAFKA_LINE.match(message)
            and _ROUTINE_WARNING.search(message)
        ):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def librdkafka_logger() -> logging.Logger:
    """The logger every librdkafka client logs to (its ``logger`` property)."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, RoutineLibrdkafkaWarnings) for f in logger.filters):
        logger.addFilter(RoutineLibrdkafkaWarnings())
    return logger
