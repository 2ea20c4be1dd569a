"""Exceptions -> HTTP answers: the gRPC status's HTTP twin, a google.rpc.Status body, Retry-After.

Domain errors (PhilipError) and upstream gRPC failures (with their rich details) map alike; any
other exception is a bug: logged with its traceback, answered 500 with only the request id.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from starlette.responses import Response

from philip.logs import get_logger
from philip.rpc.errors import PhilipError, Unavailable
from philip.rpc.status import DETAILS_KEY, to_rpc_status

log = get_logger("services.gateway.http")

HTTP_STATUS = {
    "OK": 200, "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 409, "ABORTED": 409, "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
_RETRY_AFTER_DEFAULT_S = {"RESOURCE_EXHAUSTED": 1.0, "UNAVAILABLE": 1.0}


def status_of(exc: BaseException, request_id: str) -> status_pb2.Status:
    """The google.rpc.Status for ``exc`` (as the gRPC edge would send it)."""
    if isinstance(exc, aio.AioRpcError):
        raw = next((v for k, v in exc.trailing_metadata() or () if k == DETAILS_KEY), None)
        if isinstance(raw, bytes):
            return status_pb2.Status.FromString(raw)
        code = exc.code() if isinstance(exc.code(), grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        if code == grpc.StatusCode.UNKNOWN:  # an upstream that failed without a status is unreachable to us
            return _status(Unavailable(f"upstream failed: {exc.details() or 'no details'}"))
        return status_pb2.Status(code=code.value[0], message=exc.details() or "")
    if isinstance(exc, PhilipError):
        return _status(exc)
    if any(cls.__name__ == "StoreUnavailable" for cls in type(exc).__mro__):
        log.warning("http.store_unavailable", error=str(exc))
        return _status(Unavailable(f"store unavailable: {exc}", retry_after_s=getattr(exc, "retry_after_s", None)))
    log.error("http.internal_error", exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (request id {request_id})")


def _status(err: PhilipError) -> status_pb2.Status:
    raw = dict(to_rpc_status(err).trailing_metadata)[DETAILS_KEY]
    return status_pb2.Status.FromString(raw)


def code_name(status: status_pb2.Status) -> str:
    return code_pb2.Code.Name(status.code) if status.code in code_pb2.Code.values() else "UNKNOWN"


def retry_after_s(status: status_pb2.Status) -> float | None:
    for packed in status.details:
        if packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            packed.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return _RETRY_AFTER_DEFAULT_S.get(code_name(status))


def error_response(exc: BaseException, request_id: str) -> Response:
    status = status_of(exc, request_id)
    name = code_name(status)
    # An edge-only error may name its own HTTP status (413 body too large, 422 key reused).
    http = getattr(exc, "http_status", None) or HTTP_STATUS.get(name, 500)
    headers = {}
    delay = retry_after_s(status) or getattr(exc, "retry_after_s", None)
    if delay is not None and http in (409, 429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(delay)))
    body: dict[str, Any] = json_format.MessageToDict(status)
    return Response(json.dumps(body), status_code=http, headers=headers, media_type="application/json")


def error_body(code: str, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=getattr(code_pb2, code), message=message)


__all__ = ["HTTP_STATUS", "code_name", "error_body", "error_response", "retry_after_s", "status_of"]
