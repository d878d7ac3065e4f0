"""Log lines of `edgeops agent run` on stderr, in the format their reader keeps.

    text     time, level, logger, message, then the fields: for a terminal
    journal  `<N>logger: message device_id=... release=... rollout_id=...`: journald adds
             the time, unit and host itself, and reads the syslog priority from `<N>`
             (systemd's SyslogLevelPrefix=, on by default)
    json     one JSON object per line, for log collectors

Every record carries the agent's `device_id`, `release` (the TUF target it serves) and
`rollout_id` (of the rollout whose command it handled last) as fields; None until known.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal, TextIO

__all__ = [
    "FIELDS",
    "LOG_FORMATS",
    "LogFormat",
    "configure_logging",
    "resolve_log_format",
    "rollout_id_of",
]

LogFormat = Literal["text", "journal", "json"]
LOG_FORMATS: tuple[str, ...] = ("auto", "text", "journal", "json")
FIELDS = ("device_id", "release", "rollout_id")
LogFields = Callable[[], Mapping[str, str | None]]

# The server's rollout controller names its commands `rollout-<id>-<kind>-<epoch ms>`.
_ROLLOUT_COMMAND = re.compile(r"^rollout-(?P<id>.+)-[a-z]+-\d+$")
# syslog priorities (sd-daemon(3)): err 3, warning 4, info 6, debug 7.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


def rollout_id_of(command_id: str | None) -> str | None:
    """The rollout a command belongs to, from its id; None for other commands."""
    match = _ROLLOUT_COMMAND.match(command_id or "")
    return match.group("id") if match else None


def resolve_log_format(requested: str, environ: Mapping[str, str], stream: TextIO) -> LogFormat:
    """`auto` is `journal` when `stream` is the journal systemd connected (JOURNAL_STREAM
    names its device and inode), else `text`."""
    if requested != "auto":
        if requested not in LOG_FORMATS:
            raise ValueError(f"log format {requested!r} is not one of {', '.join(LOG_FORMATS)}")
        return requested  # type: ignore[return-value]
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return "text"
    return "journal" if f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}" else "text"


class _AgentFields(logging.Filter):
    """Stamps the agent's fields on every record that passes the handler."""

    def __init__(self, fields: LogFields) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            values = dict(self._fields())
        except Exception:  # a log line must never fail because the agent is half built
            values = {}
        for key in FIELDS:
            setattr(record, key, values.get(key))
        return True


def _pairs(record: logging.LogRecord) -> str:
    values = ((key, getattr(record, key, None)) for key in FIELDS)
    return " ".join(f"{key}={value}" for key, value in values if value is not None)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = _pairs(record)
        head, sep, tail = line.partition("\n")  # fields after the message, before a traceback
        return f"{head} {pairs}{sep}{tail}" if pairs else line


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 7)}>"
        pairs = _pairs(record)
        text = f"{record.name}: {record.getMessage()}" + (f" {pairs}" if pairs else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # journald makes each line an entry: every line keeps the record's priority
        return "\n".join(prefix + line for line in text.splitlines())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: getattr(record, key, None) for key in FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_FORMATTERS: dict[LogFormat, Callable[[], logging.Formatter]] = {
    "text": _TextFormatter,
    "journal": _JournalFormatter,
    "json": _JsonFormatter,
}


def configure_logging(
    log_format: LogFormat,
    fields: LogFields,
    *,
    level: int | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one stderr handler in `log_format`, whose
    records carry `fields()`; `level` None keeps the root's level (set by `edgeops -v`)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_FORMATTERS[log_format]())
    handler.addFilter(_AgentFields(fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
    return handler
