"""Mapping between domain errors and rich gRPC statuses (google.rpc error details)."""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from philip.rpc.errors import PhilipError

ERROR_DOMAIN = "philip.v1"
DETAILS_KEY = "grpc-status-details-bin"

# Domain codes that invite a retry, so they carry RetryInfo when a delay is known.
_RETRYABLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")


def status_code(err: PhilipError) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` named by ``err.code``."""
    return grpc.StatusCode[err.code]


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def to_rpc_status(err: PhilipError) -> grpc.Status:
    """Build the rich status (code, message, BadRequest/RetryInfo/ErrorInfo) for ``err``."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=type(err).__name__, domain=ERROR_DOMAIN))]
    if err.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if err.retry_after_s is not None and err.code in _RETRYABLE:
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=_duration(max(0.0, err.retry_after_s)))))
    code = getattr(code_pb2, err.code)
    return rpc_status.to_status(status_pb2.Status(code=code, message=err.message, details=details))


def error_details(exc: grpc.RpcError) -> dict[str, Any]:
    """Parse the rich details of a failed call (for clients and tests).

    Returns ``{"code": "INVALID_ARGUMENT", "message": ..., "reason": "InvalidArgument" | None,
    "domain": ..., "field_violations": [(field, description), ...], "retry_after_s": float | None}``.
    Works for ``grpc.aio.AioRpcError`` and sync ``grpc.RpcError`` calls alike.
    """
    code = exc.code() if hasattr(exc, "code") else None
    out: dict[str, Any] = {
        "code": code.name if isinstance(code, grpc.StatusCode) else None,
        "message": exc.details() if hasattr(exc, "details") else None,
        "reason": None,
        "domain": None,
        "field_violations": [],
        "retry_after_s": None,
    }
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    raw = next((value for key, value in (trailing or ()) if key == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return out
    status = status_pb2.Status.FromString(raw)
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            out["reason"], out["domain"] = info.reason, info.domain
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            out["field_violations"].extend((v.field, v.description) for v in bad.field_violations)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            out["retry_after_s"] = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return out
