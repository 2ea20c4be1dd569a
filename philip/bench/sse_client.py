"""An SSE reader and JSON helpers over httpx for `philip bench http` (loopback only, every wait bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from philip.bench.server_process import ServerProcess

T = TypeVar("T")


class HttpBenchError(RuntimeError):
    """A call of the benchmark did not do what it should (an error status, an error event, a short result)."""


@dataclass
class SseEvent:
    """One Server-Sent Event: its name, id, data text and arrival time (perf_counter)."""

    name: str
    id: str
    data: str
    at: float

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


async def sse_events(client: Any, url: str) -> AsyncGenerator[SseEvent, None]:
    """The events of an SSE response, as they arrive; ends with the response."""
    async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            raise HttpBenchError(f"GET {url}: {response.status_code} {body[:300]}")
        name, event_id, data = "", "", list[str]()
        async for line in response.aiter_lines():
            if not line:
                if data:
                    yield SseEvent(name or "message", event_id, "\n".join(data), time.perf_counter())
                name, data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment: the heartbeat
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value


def checked(response: Any, expected: int) -> dict[str, Any]:
    if response.status_code != expected:
        raise HttpBenchError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                             f"{response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


async def bounded(awaitable: Awaitable[T], timeout_s: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        raise HttpBenchError(f"{what} took longer than {timeout_s:.0f} s") from None


async def wait_http_ready(http: Any, server: ServerProcess, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/readyz")).status_code == 200:
                return
        if server.proc.poll() is not None:
            raise HttpBenchError(f"the server exited with {server.proc.returncode}:\n{server.log_tail()}")
        if time.monotonic() >= deadline:
            raise HttpBenchError(f"the HTTP edge was not ready after {timeout_s:.0f} s:\n{server.log_tail()}")
        await asyncio.sleep(0.25)


def http_client(base_url: str, connections: int, read_timeout_s: float) -> Any:
    """An httpx client for 127.0.0.1 with room for ``connections`` open streams (PHILIP_API_KEY, if set)."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if (key := os.environ.get("PHILIP_API_KEY")) else {}
    return httpx.AsyncClient(
        base_url=base_url, headers=headers, trust_env=False,  # no proxies: loopback only
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(30.0, read=read_timeout_s, pool=read_timeout_s),
    )
