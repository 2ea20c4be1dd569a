"""`philip serve all` in this process on a copy of a tiny family folder, for the families' gRPC and HTTP tests."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio

from philip.settings import Settings
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.app import serve
from tests.families.conftest import REPO
from tests.gateway.grpc_sessions_support import FABRIC, Msg, read_until


@dataclass
class Served:
    gateway: gateway_pb2_grpc.GatewayStub
    addresses: dict[str, str]
    model: Path


@asynccontextmanager
async def serving(folder: Path, workdir: Path, *, prepare: Callable[[Path], None] = lambda model: None,
                  **overrides: Any) -> AsyncIterator[Served]:
    """``folder`` copied into ``workdir`` (start-up fits and saves its preview projection there), ``prepare``d, then
    served with every role in this process; a start-up failure raises its own error instead of a time-out."""
    model = workdir / folder.name
    shutil.copytree(folder, model)
    prepare(model)
    settings = Settings(**{"model_dir": str(model), "upscaler_path": str(REPO / "models" / "philip-tiny-x4.onnx"),
                           "port": 0, "http_port": 0, "max_queue": 4, "batch_window_ms": 5, "grace_s": 1.0,
                           "threads": 1, "adapters_dir": str(model.parent / "adapters"), **overrides})
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("all", settings, stop=stop, on_ready=ready.set_result))
    waiters: list[asyncio.Future[Any]] = [task, ready]
    done, _ = await asyncio.wait(waiters, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    channel = aio.insecure_channel(ready.result()["gateway"])
    try:
        yield Served(gateway_pb2_grpc.GatewayStub(channel), ready.result(), model)
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)


async def liked_and_disliked_round(gateway: gateway_pb2_grpc.GatewayStub,
                                   params: common_pb2.GenerationParams) -> gateway_pb2.RoundImages:
    """A session with FABRIC weights: round 1, then round 2 after liking its first image and disliking its second."""
    call = gateway.Session()
    await call.write(Msg(start=gateway_pb2.SessionStart(params=params, weights=FABRIC)))
    first = (await read_until(call, "round_images"))[-1].round_images.images
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[first[0].image.id],
                                                              disliked_image_ids=[first[1].image.id])))
    second = (await read_until(call, "round_images", round_number=2))[-1].round_images
    await call.done_writing()
    call.cancel()
    return second
