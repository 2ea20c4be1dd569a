"""What every call the gateway makes upstream shares: the metadata it forwards, and its failures as domain
errors of the same status code."""

from __future__ import annotations

import structlog
from grpc import aio

from philip.rpc.auth import tenant_metadata
from philip.rpc.errors import Cancelled, PhilipError, error_from_code
from philip.rpc.interceptor import REQUEST_ID_KEY


def metadata() -> tuple[tuple[str, str], ...]:
    """The caller's request id (so upstream logs line up with ours) and tenant, forwarded upstream."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return (((REQUEST_ID_KEY, request_id),) if request_id else ()) + tenant_metadata()


def from_rpc(exc: aio.AioRpcError, who: str) -> PhilipError:
    """An upstream call's failure as the domain error of its code (UNAVAILABLE when the replica crashed)."""
    code = exc.code().name if exc.code() is not None else "UNKNOWN"
    message = exc.details() or f"{who} call failed"
    if code == "CANCELLED":
        return Cancelled(f"{who} call cancelled: {message}")
    if code == "UNKNOWN":
        return error_from_code("UNAVAILABLE", f"{who} failed: {message}")
    return error_from_code(code, f"{who}: {message}" if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else message)
