"""Shared pieces of the HTTP edge tests: Redis, Server-Sent Events, google.rpc.Status bodies, schemas."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from PIL import Image
from redis.asyncio import Redis

from philip.store import RedisStore

REDIS_URL = "redis://127.0.0.1:6379/15"
STATUS_CODES = set(range(17))  # google.rpc.Code
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


async def redis_store() -> tuple[RedisStore, str]:
    """A RedisStore under a prefix of its own (skips the module when Redis is unreachable)."""
    probe = RedisStore(REDIS_URL, socket_timeout=1.0, retries=0)
    reachable = await probe.ping()
    await probe.close()
    if not reachable:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    prefix = f"philip-test:{uuid.uuid4().hex}:"
    return RedisStore(REDIS_URL, prefix=prefix, socket_timeout=2.0), prefix


async def drop_redis_keys(prefix: str) -> None:
    raw = Redis.from_url(REDIS_URL)
    keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
    if keys:
        await raw.delete(*keys)
    await raw.aclose()


# ---- Server-Sent Events ---------------------------------------------------------------------------


@dataclass
class Event:
    id: str
    event: str
    data: dict[str, Any]


@dataclass
class Stream:
    """The frames of one SSE answer as they were read (comments and ``retry:`` lines kept apart)."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry_ms: int | None = None
    ended: bool = False  # the server ended the answer (not we)

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def ids(self) -> list[str]:
        return [e.id for e in self.events]


async def frames(response: httpx.Response, stream: Stream) -> AsyncIterator[Event]:
    """Parse ``response``'s body as SSE, yielding each event (and recording everything in ``stream``)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                event = Event(fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"]))
                stream.events.append(event)
                yield event
            elif "retry" in fields:
                stream.retry_ms = int(fields["retry"])
            fields = {}
            continue
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    stream.ended = True


async def read_events(client: httpx.AsyncClient, url: str, *, until: str | None = None, count: int | None = None,
                      last_event_id: str | None = None, timeout_s: float = 60.0) -> Stream:
    """GET ``url`` as SSE; stop after the first ``until`` event, after ``count`` events, or at the answer's end."""
    stream = Stream()
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}

    async def read() -> None:
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "no-cache" in response.headers["cache-control"]
            async for event in frames(response, stream):
                if event.event == until or (count is not None and len(stream.events) >= count):
                    return

    await asyncio.wait_for(read(), timeout_s)
    return stream


# ---- error bodies and schemas ----------------------------------------------------------------------


def assert_status_body(response: httpx.Response, code: int | None = None) -> dict[str, Any]:
    """``response``'s body is a google.rpc.Status (``code`` int, ``message`` str, ``details`` a list)."""
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.status_code, response.headers.get("content-type"), response.content[:200])
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), int) and body["code"] in STATUS_CODES, body
    assert isinstance(body.get("message"), str), body
    assert isinstance(body.get("details", []), list), body
    assert set(body) <= {"code", "message", "details"}, body
    if code is not None:
        assert body["code"] == code, body
    return body


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any] | None:
    return next((d for d in body.get("details", []) if d.get("@type") == type_url), None)


def schema_validator(doc: dict[str, Any], schema: dict[str, Any]) -> OAS31Validator:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``doc``."""
    return OAS31Validator({**schema, "components": doc["components"]})


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass
class Served:
    http: str  # base URL
    grpc: str
    doc: dict[str, Any]  # the OpenAPI document it serves

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http, timeout=60, **kwargs)

    def validate(self, data: Any, schema_name: str) -> None:
        schema_validator(self.doc, component(schema_name)).validate(data)


# ---- sessions ------------------------------------------------------------------------------------


def image_ids(round_images: dict[str, Any]) -> list[str]:
    return [i["image"]["id"] for i in round_images["images"]]


def png_size(png: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.size


async def start_session(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    snapshot: dict[str, Any] = response.json()
    return snapshot
