"""Kantata OX error objects and the exception that carries them to an error envelope."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorType(StrEnum):
    """The ``type`` of an error object in a Kantata error envelope."""

    VALIDATION = "validation"
    OAUTH = "oauth"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class ApiError:
    """One entry of the ``errors`` array."""

    type: ErrorType
    message: str
    field: str | None = None

    def to_json(self) -> dict[str, str]:
        """The error object as sent on the wire."""
        data = {"type": str(self.type), "message": self.message}
        if self.field is not None:
            data["field"] = self.field
        return data


class RequestError(Exception):
    """A request answered with an error envelope and the given HTTP status."""

    def __init__(self, status: int, errors: list[ApiError]) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors

    @classmethod
    def single(
        cls, status: int, type_: ErrorType, message: str, field: str | None = None
    ) -> RequestError:
        """An error with exactly one entry."""
        return cls(status, [ApiError(type_, message, field)])


def bad_request(message: str, field: str | None = None) -> RequestError:
    """A 400 for a body that is not the documented shape."""
    return RequestError.single(400, ErrorType.SYSTEM, message, field)


def unprocessable(message: str, field: str) -> RequestError:
    """A 422 with a single validation error."""
    return RequestError.single(422, ErrorType.VALIDATION, message, field)
