"""Logging set-up: one record, one line, whatever a peer or the directory put in the message."""

from __future__ import annotations

import json
import logging
import logging.handlers
import pathlib
import sys
import time

from exporter.text import escape_unsafe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info logger=exporter msg="..."`, as Prometheus's own exporters log (go-kit logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_unsafe(record.getMessage())
        if record.exc_info:
            message += " | " + escape_unsafe(self.formatException(record.exc_info)).replace("\n", " | ")
        fields = (
            ("ts", self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"),
            ("level", _LEVEL_NAMES.get(record.levelname, record.levelname.lower())),
            ("logger", record.name),
            ("msg", message),
        )
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg (and exc when there is a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)  # escapes every control character: one line


_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}


def _logfmt_value(value: str) -> str:
    if value and all(ch not in value for ch in ' "=') and value.isprintable():
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, so that a crafted site name, banner or DN cannot forge
    log lines or drive a terminal. Tracebacks (from the logging call, not the data) keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_unsafe(record.message)
        return super().formatMessage(record)


#: a log file is rotated at this size, keeping this many old files (a service runs for months)
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_KEEP = 5


LEVELS = ("debug", "info", "warn", "warning", "error")
FORMATS = ("text", "logfmt", "json")


def setup(level: str, file: str | None = None, fmt: str = "text") -> None:
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
    formatter: logging.Formatter
    if fmt == "logfmt":
        formatter = LogfmtFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = OneLineFormatter(FORMAT)
    if fmt != "text":
        formatter.converter = time.gmtime  # type: ignore[method-assign,assignment,unused-ignore]
    handler.setFormatter(formatter)
    logging.basicConfig(level="WARNING" if level == "warn" else level.upper(), handlers=[handler])
