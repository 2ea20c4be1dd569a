"""The HTTP edge's middleware over ASGI (no domain calls): CORS only when configured, a preflight never
meets the key check, security headers and a request id on every answer, 401 as a google.rpc.Status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from philip.rpc.auth import ApiKeys, add_key
from philip.store import MemoryStore
from services.gateway.http.api import EdgeState
from services.gateway.http.app import build_app
from services.gateway.http.idempotency import Idempotency


class _NoCore:
    """Routes may look up the domain when they are built; calling into it is a test failure."""

    store = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the middleware test called into the domain")


def _client(tmp_path: Path, origins: tuple[str, ...]) -> tuple[httpx.AsyncClient, str]:
    key = add_key(tmp_path / "keys.json", "acme")
    state = EdgeState(_NoCore(), Idempotency(MemoryStore()), max_upload_bytes=1024)  # type: ignore[arg-type]
    app = build_app(state, ApiKeys.load(tmp_path / "keys.json"), origins)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge"), key


@pytest.mark.parametrize("origins", [(), ("https://studio.example.com",)])
async def test_cors_only_for_listed_origins_and_preflight_needs_no_key(tmp_path: Path,
                                                                       origins: tuple[str, ...]) -> None:
    client, _ = _client(tmp_path, origins)
    async with client:
        reply = await client.options("/v1/sessions", headers={
            "Origin": "https://studio.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
    if origins:
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://studio.example.com"
    else:
        assert "access-control-allow-origin" not in reply.headers


async def test_every_answer_has_security_headers_and_a_request_id(tmp_path: Path) -> None:
    client, _ = _client(tmp_path, ())
    async with client:
        health = await client.get("/healthz", headers={"X-Request-Id": "abc123"})
        missing = await client.get("/v1/sessions")
    for reply in (health, missing):
        csp = reply.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert reply.headers["x-content-type-options"] == "nosniff"
    assert health.status_code == 200 and health.headers["x-request-id"] == "abc123"
    assert missing.status_code == 401
    body = missing.json()
    assert body["code"] == 16 and "API key" in body["message"] and len(missing.headers["x-request-id"]) == 32


async def test_readyz_says_starting_until_the_edge_serves(tmp_path: Path) -> None:
    client, _ = _client(tmp_path, ())
    async with client:
        reply = await client.get("/readyz")
    assert reply.status_code == 503 and reply.json() == {"status": "starting"}
