"""The OpenAPI 3.1 document of the HTTP edge, made from its route table and the .proto descriptors.

Schemas follow protobuf's canonical JSON mapping as the edge writes it: lowerCamelCase names, 64-bit
integers as strings, bytes as base64 strings, enums by name. Nothing is written by hand twice.
"""

from __future__ import annotations

import html
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.rpc import status_pb2

from services.gateway.http.api import ApiRoute
from services.gateway.http.errors import HTTP_STATUS

_NON_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    # Canonical JSON writes the non-finite floats as strings (and the edge accepts them so).
    FieldDescriptor.TYPE_FLOAT: {"oneOf": [{"type": "number"}, _NON_FINITE]},
    FieldDescriptor.TYPE_DOUBLE: {"oneOf": [{"type": "number"}, _NON_FINITE]},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_REASONS = {400: "Bad request", 401: "Missing or unknown API key", 403: "Not allowed", 404: "Unknown or another "
            "tenant's", 409: "Conflicts with the current state", 413: "Body over its limit", 422: "Idempotency-Key "
            "reused with another body", 429: "Quota or queue full (Retry-After)", 503: "Unavailable (Retry-After)"}


class _Schemas:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def ref(self, descriptor: Any) -> dict[str, Any]:  # a message or enum descriptor
        name = descriptor.full_name
        if name not in self.defs:
            self.defs[name] = {}  # placeholder first: messages may be recursive
            self.defs[name] = self._enum(descriptor) if isinstance(descriptor, EnumDescriptor) else \
                self._message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def _enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        return {"type": "string", "enum": [v.name for v in descriptor.values]}

    def _message(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name == "google.protobuf.Any":
            return {"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": True}
        properties = {f.json_name: self._field(f) for f in descriptor.fields}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def _field(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self._single(f.message_type.fields_by_name["value"])}
        single = self._single(f)
        return {"type": "array", "items": single} if f.is_repeated else single

    def _single(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(f.message_type)
        if f.type == FieldDescriptor.TYPE_ENUM:
            return self.ref(f.enum_type)
        return dict(_SCALARS[f.type])


def document(routes: list[ApiRoute], version: str) -> dict[str, Any]:
    schemas = _Schemas()
    status_ref = schemas.ref(status_pb2.Status.DESCRIPTOR)
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas, status_ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": "PHiLIP HTTP API", "version": version,
                 "description": "Sessions, generations, images, adapters and activity, as JSON (protobuf's canonical "
                                "mapping of protos/philip/v1) and Server-Sent Events. See docs/HTTP.md."},
        "paths": paths,
        "components": {"schemas": schemas.defs,
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                                      "description": "an API key from `philip keys add`"}}},
        "security": [{"apiKey": []}],
    }


def _operation(route: ApiRoute, schemas: _Schemas, status_ref: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": _operation_id(route), "summary": route.summary, "tags": [route.tag]}
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", route.path)]
    parameters += [{"name": name, "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 0, "maximum": 100} if name == "pageSize"
                    else {"type": "string"}} for name in route.query]
    if route.kind == "sse":
        parameters.append({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "resume after this event id"})
    if route.idempotent_create:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 128}})
    if parameters:
        operation["parameters"] = parameters
    if route.kind == "multipart":
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["photos", "token", "class_word"], "properties": {
                "photos": {"type": "array", "minItems": 4, "maxItems": 7,
                           "items": {"type": "string", "contentMediaType": "image/png"}},
                "token": {"type": "string"}, "class_word": {"type": "string"},
                "method": {"type": "string", "enum": ["LORA", "TEXTUAL_INVERSION"]},
                "steps": {"type": "integer", "minimum": 0}, "rank": {"type": "integer", "minimum": 0}}}}}}
    elif route.request is not None:
        operation["requestBody"] = {"required": False, "content": {"application/json": {
            "schema": schemas.ref(route.request.DESCRIPTOR)}}}
    responses: dict[str, Any] = {}
    if route.kind == "sse":
        assert route.stream_of is not None
        event = route.stream_of.DESCRIPTOR
        responses["200"] = {"description": f"text/event-stream; each `data:` is a {event.name}",
                            "content": {"text/event-stream": {"schema": {"type": "string"},
                                                              "x-event-schema": schemas.ref(event)}}}
    elif route.kind == "png":
        responses["200"] = {"description": "the PNG", "content": {"image/png": {
            "schema": {"type": "string", "contentMediaType": "image/png"}}}}
        responses["304"] = {"description": "not modified (If-None-Match)"}
    else:
        assert route.response is not None
        responses[str(route.status)] = {"description": route.response.DESCRIPTOR.name, "content": {
            "application/json": {"schema": schemas.ref(route.response.DESCRIPTOR)}}}
    for code in (*route.errors, *((422,) if route.idempotent_create else ())):
        responses[str(code)] = {"description": _REASONS.get(code, "error"),
                                "content": {"application/json": {"schema": status_ref}}}
    responses["default"] = {"description": "any other error (google.rpc.Status)",
                            "content": {"application/json": {"schema": status_ref}}}
    operation["responses"] = responses
    return operation


def _operation_id(route: ApiRoute) -> str:
    words = [w for w in re.split(r"[/{}.\-]+", route.path) if w and w != "v1"]
    return route.method.lower() + "".join(w[:1].upper() + w[1:] for w in words)


def docs_page(doc: dict[str, Any]) -> str:
    """A plain HTML list of every route (no script: the edge's CSP allows none inline, and none is needed)."""
    rows = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            rows.append(f"<tr><td class=m>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op['summary'])}</td></tr>")
    codes = ", ".join(f"{name} {code}" for name, code in HTTP_STATUS.items() if name != "OK")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>PHiLIP HTTP API</title>"
            "<link rel=icon href=/static/favicon.svg><link rel=stylesheet href=/static/docs.css></head>"
            "<body><h1>PHiLIP HTTP API</h1>"
            f"<p>Version {html.escape(doc['info']['version'])}. The machine-readable document: "
            "<a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1). Bodies are protobuf's canonical JSON of "
            "<code>protos/philip/v1</code>; errors are <code>google.rpc.Status</code> "
            f"({html.escape(codes)}).</p><table><tr><th>method</th><th>path</th><th>what</th></tr>"
            + "".join(rows) + "</table></body></html>")


__all__ = ["docs_page", "document"]
