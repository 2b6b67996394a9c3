"""librdkafka's own log goes through Python logging (the stage's format and level), not raw
``%4|...`` lines on stderr; its routine start-up warnings, which it retries by itself, read INFO."""

from __future__ import annotations

import logging
import re

import pytest

from mailjournal.config import LoggingConfig
from mailjournal.kafka import make_producer
from mailjournal.logs import (
    LIBRDKAFKA_LOGGER,
    RoutineLibrdkafkaWarnings,
    librdkafka_logger,
    setup_logging,
)
from tests.fixtures.config import make_config
from tests.fixtures.smtp import free_port, wait_until

GETPID = (
    "GETPID [mailjournal-journal-vm-1#producer-1] [thrd:main]: Failed to acquire transactional "
    "PID from broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying"
)


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(LIBRDKAFKA_LOGGER, level, __file__, 1, message, None, None)


def test_routine_start_up_warnings_read_info_and_real_ones_stay() -> None:
    routine = record(logging.WARNING, GETPID)
    keep = record(logging.WARNING, "FAIL [x#producer-1] 127.0.0.1:9092: Connect failed")
    error = record(logging.ERROR, GETPID)  # an error is never demoted
    ours = record(logging.WARNING, "journal: Coordinator load in progress")  # not librdkafka's
    flt = RoutineLibrdkafkaWarnings()
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    old = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert flt.filter(routine) and routine.levelname == "INFO"
        assert flt.filter(keep) and keep.levelname == "WARNING"
        assert flt.filter(error) and error.levelname == "ERROR"
        assert flt.filter(ours) and ours.levelname == "WARNING"
        logger.setLevel(logging.WARNING)  # an operator's level: the demoted one is dropped
        assert not flt.filter(record(logging.WARNING, GETPID))
    finally:
        logger.setLevel(old)


def test_the_stages_handler_demotes_them_on_any_logger(capfd: pytest.CaptureFixture[str]) -> None:
    """A client given a logger of its own (ingest's producer logs to ``ingest.kafka``): the
    stage's handler demotes the same lines, and drops them at an operator's WARNING level."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(LoggingConfig(level="INFO"), stage="ingest")
        logging.getLogger("ingest.kafka").warning("%s", GETPID)
        logging.getLogger("ingest.kafka").warning("%s", "FAIL [x#producer-1] down")
        err = capfd.readouterr().err
        assert " INFO ingest.kafka: GETPID" in err and " WARNING ingest.kafka: FAIL" in err
        setup_logging(LoggingConfig(level="WARNING"), stage="ingest")
        logging.getLogger("ingest.kafka").warning("%s", GETPID)
        assert "GETPID" not in capfd.readouterr().err
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_clients_librdkafka_log_reaches_python_logging_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A real producer to a port nobody listens on: librdkafka's connection failure is a record
    of the librdkafka logger (served by poll), and nothing is written to the process's stderr."""
    assert librdkafka_logger() is logging.getLogger(LIBRDKAFKA_LOGGER)
    config = make_config({"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}})
    producer = make_producer(config, role="test-log")
    with caplog.at_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER):

        def logged() -> bool:
            producer.poll(0.1)
            return any(
                r.name == LIBRDKAFKA_LOGGER and "Connection refused" in r.getMessage()
                for r in caplog.records
            )

        wait_until(logged, 20, "librdkafka's connection failure logged")
    producer.flush(0)
    err = capfd.readouterr().err
    assert not re.search(r"%\d\|", err), err  # librdkafka's own stderr format
