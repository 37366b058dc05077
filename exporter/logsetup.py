"""Logging set-up: one record, one line, whatever a peer or the directory put in the message."""

from __future__ import annotations

import logging
import sys

from exporter.text import escape_unsafe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, so that a crafted site name, banner or DN cannot forge
    log lines or drive a terminal. Tracebacks (from the logging call, not the data) keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_unsafe(record.message)
        return super().formatMessage(record)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
