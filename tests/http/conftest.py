"""The open deployment the HTTP API tests share: one `serve("all")` for the package (test_http_api.py and
test_http_fuzz.py), on Redis, with the shipped model, its HTTP edge on a free port, no API keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from philip.bench.server_process import free_port
from philip.settings import Settings
from services.app import serve
from tests.http.support import Served, drop_redis_keys, redis_store
from tests.personalizer.conftest import MODEL, UPSCALER


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def served() -> AsyncIterator[Served]:
    store, prefix = await redis_store()
    settings = Settings(model_dir=str(MODEL), upscaler_path=str(UPSCALER), port=0, http_port=free_port(),
                        max_queue=8, max_batch=8, batch_window_ms=5, blob_ttl_s=300, grace_s=1.0, threads=1)
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("all", settings, store=store, stop=stop, on_ready=ready.set_result))
    try:
        addresses = await asyncio.wait_for(asyncio.shield(ready), 120)
        assert addresses["http"].endswith(f":{settings.http.http_port}")
        async with httpx.AsyncClient(base_url=f"http://{addresses['http']}") as http:
            doc = (await http.get("/openapi.json")).json()
        yield Served(f"http://{addresses['http']}", addresses["gateway"], doc)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await store.close()
        await drop_redis_keys(prefix)
