"""structlog, configured once: JSON lines unless on a terminal, secrets redacted.

``run_id``, ``change_id`` and ``workspace_id`` travel through contextvars, so every line a task
writes carries the IDs it works on. The redaction processor runs last before rendering: any
value that contains the API token, and any key that names a credential, is masked.

Levels mean something: a successful request is ``debug``, a retried one ``warning``, a change
that fails ``error``. The run's summary is its record and is written whatever the level
(:func:`get_record_logger`). Under systemd, each line starts with its syslog priority (``<3>``
for an error ...), which journald takes off and keeps, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
SECRET_KEYS = frozenset({"authorization", "headers", "cookie"})
SECRET_PARTS = ("token", "password", "secret", "api_key", "api-key", "credential")


def _secret_key(key: object) -> bool:
    name = str(key).lower()
    return name in SECRET_KEYS or any(part in name for part in SECRET_PARTS)


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR


class Redactor:
    """A structlog processor that masks secrets anywhere in an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            if _secret_key(key):
                event[key] = REDACTED
            else:
                event[key] = self._scrub(event[key])
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: REDACTED if _secret_key(k) else self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return self._scrub(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, BaseException):
            return self._scrub(f"{type(value).__name__}: {value}")
        return value


SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


class JournalPriority:
    """Prefix each rendered line with its syslog priority, as journald reads stderr."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = SYSLOG_PRIORITY.get(str(event.get("level", name)), 6)
        return f"<{priority}>{self.renderer(logger, name, event)}"


def configure(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    *,
    journald: bool = False,
) -> None:
    """Set up structlog for the process. Call once, at the edge.

    ``journald``: stderr is the journal's stream (``$JOURNAL_STREAM``), so lines carry their
    priority.
    """
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    if journald:
        renderer = JournalPriority(renderer)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
        Redactor(secrets),
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "kantata_sync") -> Any:
    return structlog.get_logger(name)


def get_record_logger() -> Any:
    """A logger for the lines that are a record (the run summary): written at any level.

    It shares the processors and output of the current configuration; only the level filter
    is left out.
    """
    config = structlog.get_config()
    return structlog.wrap_logger(
        config["logger_factory"](),
        processors=config["processors"],
        context_class=config["context_class"],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
