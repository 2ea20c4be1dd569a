"""The HTTP edge's bodies: protobuf messages in protobuf's canonical JSON mapping, nothing else."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from philip.rpc.errors import InvalidArgument, PhilipError

M = TypeVar("M", bound=Message)
MAX_JSON_BYTES = 1024 * 1024


class PayloadTooLarge(PhilipError):
    """A request body over its limit: HTTP 413 (gRPC would say RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 413


def to_json(message: Message) -> dict[str, Any]:
    """Canonical JSON, every field printed (clients need not know proto3's defaults)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def dumps(message: Message) -> str:
    return json.dumps(to_json(message), separators=(",", ":"))


class ProtoResponse(Response):
    media_type = "application/json"

    def __init__(self, message: Message, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(dumps(message), status_code=status_code, headers=headers)


async def read_body(request: Request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The request body, refused past ``limit`` bytes (by Content-Length first, then as it arrives)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(body: bytes, message_type: type[M]) -> M:
    """``body`` as ``message_type``; an empty body is the empty message. InvalidArgument otherwise."""
    message = message_type()
    if not body.strip():
        return message
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"the body must be a JSON object ({message_type.DESCRIPTOR.name})", field="body")
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        why = str(exc).split("\n", 1)[0].rstrip(".")
        raise InvalidArgument(f"not a {message_type.DESCRIPTOR.name}: {why}", field=_field_of(str(exc))) from None
    return message


def _field_of(error: str) -> str:
    """The field protobuf's parser names ("Failed to parse params field: Failed to parse prompt field" ->
    "params.prompt"; 'no field named "x"' -> "x"; "Couldn't parse float: x at SessionStart.weights.start"
    -> "weights.start"), else "body"."""
    chain = re.findall(r"Failed to parse (\w+) field", error)
    unknown = re.search(r'no field named "([^"]+)"', error)
    if unknown:
        return ".".join([*chain, unknown.group(1)])
    # Some scalar errors name only the message above the field in the chain, but the whole path after "at".
    at = re.search(r' at "?\w+((?:\.\w+)+)', error)
    path = re.sub(r"\[\d+\]", "", at.group(1))[1:].split(".") if at else []
    return ".".join(path if len(path) > len(chain) else chain) or "body"


__all__ = ["MAX_JSON_BYTES", "PayloadTooLarge", "ProtoResponse", "dumps", "parse", "read_body", "to_json"]
