"""`philip serve all` on the tiny SDXL folder (in process, as tests/gateway does): it starts (fitting the preview
projection, which used to exit with a TypeError in the UNet), and serves a Generate and a session's FABRIC round
over gRPC through the gateway."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from philip.v1 import common_pb2, gateway_pb2_grpc, generator_pb2
from tests.families.serving import liked_and_disliked_round, serving

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(sdxl_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    async with serving(sdxl_dir, tmp_path_factory.mktemp("serve")) as served:
        assert (served.model / "preview_projection.json").is_file()
        yield served.gateway


def _params(**fields: int) -> common_pb2.GenerationParams:
    params = common_pb2.GenerationParams(prompt="a red circle", width=64, height=64, steps=3)
    for name, value in fields.items():
        setattr(params, name, value)
    return params


@pytest.mark.asyncio(loop_scope="module")
async def test_generate_over_grpc(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    call = gateway.Generate(timeout=60)
    await call.write(generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(
        params=_params(num_images=2, seed=3, preview_every=1))))
    await call.done_writing()
    events = [event async for event in call]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "result" and "preview" in kinds, kinds
    images = events[-1].result.images
    assert len(images) == 2 and all(Image.open(io.BytesIO(i.png)).size == (64, 64) for i in images)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_session_feedback_round_over_grpc(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    second = await liked_and_disliked_round(gateway, _params(num_images=2, seed=11))
    assert len(second.images) == 2
    assert second.compute.reference_image_evals > 0  # FABRIC ran on the refiner
