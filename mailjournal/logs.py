"""Logging set-up shared by the stages: plain text for people, JSON lines for log pipelines."""

from __future__ import annotations

import logging
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
