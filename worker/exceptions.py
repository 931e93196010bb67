"""The exceptions kantata-sync raises, all under one root.

::

    SyncError
    ├── ConfigError            bad or missing configuration; names the key and the reason
    ├── DatabaseError          the database cannot be reached or used
    │   ├── NotMigratedError   the schema is missing or older than this version
    │   └── DatabaseGone       the SQLite file was deleted or replaced under the worker
    ├── InputError             a change a producer wrote cannot be sent (becomes ``invalid``)
    ├── StepAbandoned          the run halted while a step waited to send; it is released
    │   └── LeaseLost          the step's lease may have been taken over; it is not sent
    ├── InternalError          something unexpected broke (a bug, a library exception)
    └── ApiError               talking to Kantata OX failed
        ├── TransportError     no usable HTTP response: timeout, dropped connection, too large
        ├── ProtocolError      a response that is not the documented envelope
        └── TokenRejected      401: the token is invalid or revoked; the run stops

Library errors (aiohttp, SQLAlchemy) are translated where they are raised, with the
original kept as ``__cause__``. No message ever contains the API token.
"""

from __future__ import annotations

from enum import StrEnum


class SyncError(Exception):
    """Root of every error kantata-sync raises on purpose."""


class ConfigError(SyncError):
    """The configuration is invalid; the message names the key and the reason."""


class DatabaseError(SyncError):
    """The database could not be reached or a statement failed."""


class NotMigratedError(DatabaseError):
    """The database schema is missing or behind this version of kantata-sync."""


class DatabaseGone(DatabaseError):
    """The SQLite file was deleted or replaced while the worker used it; never retried."""


class InputError(SyncError):
    """A producer's change is malformed; ``column`` says which part is wrong."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"{column}: {message}")
        self.column = column
        self.message = message


class StepAbandoned(SyncError):
    """The run halted (SIGTERM, 401) while a step waited for its turn; nothing was sent."""


class LeaseLost(StepAbandoned):
    """A lease could not be confirmed before a send: another worker may own the change now."""


class InternalError(SyncError):
    """Something unexpected broke; the change (``error_type`` internal) or the run ends."""


class ApiError(SyncError):
    """A request to Kantata OX did not produce a usable answer."""


class TransportKind(StrEnum):
    """Why no usable HTTP answer arrived; compares equal to its plain string."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    PAYLOAD = "payload"
    TOO_LARGE = "too_large"
    """The answer's body was over the client's size cap (compressed or inflated)."""


class TransportError(ApiError):
    """No usable HTTP answer arrived; ``kind`` is a :class:`TransportKind`."""

    def __init__(self, kind: TransportKind | str, message: str) -> None:
        super().__init__(message)
        # Typed as str: callers store it beside Kantata's own error types.
        self.kind: str = TransportKind(kind)


class ProtocolError(ApiError):
    """Kantata OX answered with something that is not its documented envelope."""


class TokenRejected(ApiError):
    """Kantata OX answered 401: every further request with this token would fail too."""
