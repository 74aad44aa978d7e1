"""Structured logs: one line an event, as text or as JSON (``LIBERATOR_LOG_FORMAT=json``).

Call sites log an event name plus key/value fields (``log.info("captured", extra=fields(n=3))``)
so a log pipeline can index them without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from liberator_publisher.core.times import rfc3339

__all__ = ["FIELDS_ATTR", "JsonFormatter", "TextFormatter", "configure", "fields"]

FIELDS_ATTR = "liberator_fields"
"""The LogRecord attribute that carries an event's key/value fields."""


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call: key/value fields attached to the line."""
    return {FIELDS_ATTR: values}


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, FIELDS_ATTR, None)
    return dict(found) if isinstance(found, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return rfc3339(datetime.fromtimestamp(record.created, tz=UTC))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, event (the message) and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_record_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <event> key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}:", record.getMessage()]
        parts += [f"{key}={value}" for key, value in _record_fields(record).items()]
        line = " ".join(str(part) for part in parts)
        if record.exc_info:
            # Keep one event on one line: the traceback's newlines are escaped.
            line += " exception=" + self.formatException(record.exc_info).replace("\n", "\\n")
        return line


def configure(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every ``liberator_publisher`` log line to ``stream`` (stderr) in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries stay quiet unless they warn
    logging.getLogger("liberator_publisher").setLevel(level.upper())
