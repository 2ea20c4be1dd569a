"""Domain errors that PHiLIP services raise.

Deliberately free of any grpc import: model and store code raise these without
depending on the transport; :mod:`philip.rpc.interceptor` maps them to rich gRPC
statuses at the edge. ``code`` names the ``grpc.StatusCode`` member.
"""

from __future__ import annotations

from typing import ClassVar


class PhilipError(Exception):
    """Base of all domain errors; its message is shown to the client verbatim."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        extras = "".join(
            f", {key}={value!r}"
            for key, value in (("field", self.field), ("retry_after_s", self.retry_after_s))
            if value is not None
        )
        return f"{type(self).__name__}({self.message!r}{extras})"


class InvalidArgument(PhilipError):
    """The request is malformed; ``field`` names the offending request field."""

    code = "INVALID_ARGUMENT"


class NotFound(PhilipError):
    """A referenced entity (job, session, adapter, blob) does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(PhilipError):
    """The entity to create exists already."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(PhilipError):
    """The system is not in a state where the operation can run (do not retry as is)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(PhilipError):
    """Queue full or quota hit; ``retry_after_s`` hints when to come back."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(PhilipError):
    """Transient failure (dependency down); safe to retry, optionally after ``retry_after_s``."""

    code = "UNAVAILABLE"


class Cancelled(PhilipError):
    """The operation was cancelled (e.g. the job was cancelled by the user)."""

    code = "CANCELLED"


class DeadlineExceeded(PhilipError):
    """The operation did not finish in time."""

    code = "DEADLINE_EXCEEDED"


class PermissionDenied(PhilipError):
    """The caller may not perform this operation."""

    code = "PERMISSION_DENIED"


class Unauthenticated(PhilipError):
    """The caller did not present valid credentials."""

    code = "UNAUTHENTICATED"


def error_from_code(code: str, message: str) -> PhilipError:
    """The domain exception for a status code name (e.g. one reported by an upstream service)."""
    cls = {c.code: c for c in globals().values() if isinstance(c, type) and issubclass(c, PhilipError)}.get(
        code, PhilipError)
    return cls(message) if cls.code == code else PhilipError(message)


__all__ = [
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PhilipError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_from_code",
]
