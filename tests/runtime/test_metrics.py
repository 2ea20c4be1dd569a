"""Prometheus metrics: `serve("all")` with a metrics port exposes the RPC, queue, batch, session and
training metrics, and they move when calls happen."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc import aio

from philip.clients.generate import stream_generation
from philip.settings import Settings
from philip.v1 import common_pb2, gateway_pb2_grpc
from services.app import serve

MODEL = Path(__file__).resolve().parents[2] / "models" / "philip-tiny"
pytestmark = pytest.mark.slow


def scrape(address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_metrics_port_serves_what_the_services_record(tmp_path: Path) -> None:
    settings = Settings(model_dir=str(MODEL), port=0, http_port=0, metrics_port=0, threads=1, grace_s=0.5,
                        adapters_dir=str(tmp_path))
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve("all", settings, stop=stop, on_ready=ready.set_result))
    addresses = await asyncio.wait_for(asyncio.shield(ready), 120)
    try:
        async with aio.insecure_channel(addresses["gateway"]) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            ok = common_pb2.GenerationParams(prompt="a red circle", num_images=2, steps=2, seed=1)
            await stream_generation(stub, ok, timeout_s=60)
            with pytest.raises(aio.AioRpcError) as caught:
                await stream_generation(stub, common_pb2.GenerationParams(prompt=""), timeout_s=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        invalid = 'philip_rpc_total{code="INVALID_ARGUMENT",method="/philip.v1.Gateway/Generate"}'
        for _ in range(100):  # counted when the server's handler unwinds, maybe just after the client's status
            values = await asyncio.to_thread(scrape, addresses["metrics"])
            if values.get(invalid, 0) >= 1:
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(server, 60)
    gateway = 'method="/philip.v1.Gateway/Generate"'
    assert values[f'philip_rpc_total{{code="OK",{gateway}}}'] >= 1
    assert values[f'philip_rpc_total{{code="INVALID_ARGUMENT",{gateway}}}'] >= 1
    assert values["philip_generator_batch_images_count"] >= 1
    assert values["philip_generator_queue_depth"] == 0
    for name in ("philip_sessions_active", "philip_training_running", "philip_generator_rejected_total",
                 "philip_training_step_seconds_count"):
        assert name in values, name
