"""Logging set-up: one record, one line, whatever a peer or the directory put in the message."""

from __future__ import annotations

import logging
import logging.handlers
import pathlib
import sys

from exporter.text import escape_unsafe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, so that a crafted site name, banner or DN cannot forge
    log lines or drive a terminal. Tracebacks (from the logging call, not the data) keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_unsafe(record.message)
        return super().formatMessage(record)


#: a log file is rotated at this size, keeping this many old files (a service runs for months)
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_KEEP = 5


def setup(level: str, file: str | None = None) -> None:
    """Log to stderr, or to `file` with rotation (a Windows service has no console). A file that cannot
    be opened is reported on stderr and logging stays there: losing the log must not stop the agent."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if file:
        try:
            pathlib.Path(file).parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_KEEP, encoding="utf-8"
            )
        except OSError as exc:
            print(f"warning: --log.file {file}: {exc.strerror}; logging to stderr", file=sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
