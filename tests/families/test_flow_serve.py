"""`philip serve all` on the tiny SD3 and Flux folders (in process, as test_sdxl_serve.py does): a Generate with
previews, an epsilon scheduler refused with INVALID_ARGUMENT naming the one accepted, and a session's feedback
round with likes (seed steering only: no FABRIC reference pass) over gRPC through the gateway."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from PIL import Image

from philip.v1 import common_pb2, gateway_pb2_grpc, generator_pb2
from tests.families.serving import liked_and_disliked_round, serving

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sd3", "flux"])
async def gateway(request: pytest.FixtureRequest, tiny_families: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    async with serving(tiny_families[request.param], tmp_path_factory.mktemp("serve")) as served:
        yield served.gateway


def _params(**fields: Any) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(prompt="a red circle", width=64, height=64, steps=2, **fields)


async def _generate(gateway: gateway_pb2_grpc.GatewayStub, params: common_pb2.GenerationParams) -> list[Any]:
    call = gateway.Generate(timeout=60)
    await call.write(generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=params)))
    await call.done_writing()
    return [event async for event in call]


@pytest.mark.asyncio(loop_scope="module")
async def test_generate_over_grpc(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    events = await _generate(gateway, _params(num_images=2, seed=3, preview_every=1))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "result" and "preview" in kinds, kinds
    images = events[-1].result.images
    assert len(images) == 2 and all(Image.open(io.BytesIO(i.png)).size == (64, 64) for i in images)


@pytest.mark.asyncio(loop_scope="module")
async def test_an_epsilon_scheduler_is_invalid_argument(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await _generate(gateway, _params(num_images=1, seed=3, scheduler="dpm++"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "scheduler must be one of flow_euler; got 'dpm++'" in (caught.value.details() or "")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_session_round_with_likes_over_grpc(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    second = await liked_and_disliked_round(gateway, _params(num_images=2, seed=11))
    assert len(second.images) == 2
    assert second.compute.reference_image_evals == 0  # no FABRIC on joint attention: steering only
