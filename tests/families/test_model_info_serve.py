"""GetModelInfo end to end: `philip serve all` on a tiny SDXL folder that says it is SDXL-Turbo (and fuses a base
LoRA at load, in the generator and the refiner), asked over gRPC and over HTTP (`GET /v1/model`); Turbo's limits
refused with INVALID_ARGUMENT naming them; a session's plain round counts the model's default steps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc import aio

from philip.bench.server_process import free_port
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, generator_pb2
from tests.families.checkpoint_support import save_lora_file
from tests.families.serving import serving
from tests.gateway.grpc_sessions_support import Msg, read_until

pytestmark = pytest.mark.slow


@dataclass
class Served:
    gateway: gateway_pb2_grpc.GatewayStub
    http: str
    name: str  # the served folder's


def _as_turbo(model: Path) -> None:
    # Turbo's row, at the tiny UNet's 64 px; the LoRA's name says nothing, so the folder's `variant` decides.
    (model / "philip_defaults.json").write_text(json.dumps({"variant": "turbo", "generation": {"native_size": 64}}))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    workdir = tmp_path_factory.mktemp("turbo")
    lora = save_lora_file(sdxl_dir, workdir / "style_lora.safetensors", seed=5)
    async with serving(sdxl_dir, workdir, prepare=_as_turbo, http_port=free_port(), base_lora=str(lora)) as up:
        yield Served(up.gateway, f"http://{up.addresses['http']}", up.model.name)


@pytest.mark.asyncio(loop_scope="module")
async def test_model_info_over_grpc(served: Served) -> None:
    info = await served.gateway.GetModelInfo(generator_pb2.GetModelInfoRequest(), timeout=10)
    assert (info.family, info.label, info.pipeline_class, info.dtype) == ("sdxl", "SDXL-Turbo",
                                                                          "StableDiffusionXLPipeline", "fp32")
    assert info.name == served.name  # the served folder's
    d = info.defaults
    assert (d.steps, d.min_steps, d.max_steps, d.guidance, d.scheduler) == (4, 1, 4, 0.0, "euler_a")
    assert (d.timestep_spacing, d.native_size, d.max_size) == ("trailing", 64, 768)
    assert {"dpm++", "euler", "euler_a"} <= set(info.schedulers)
    f = info.feedback
    assert f.fabric and not f.dislikes_act and f.exploration and f.seed_steering
    assert "guidance 0" in f.note and "seed steering and prompt exploration" in f.note
    assert list(info.adapter_methods) == ["lora", "textual_inversion"] and "linear" in info.preview_kinds


@pytest.mark.asyncio(loop_scope="module")
async def test_model_info_over_http(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.http, timeout=30) as http:
        answer = await http.get("/v1/model")
        doc = (await http.get("/openapi.json")).json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == "SDXL-Turbo" and body["name"] == served.name
    assert body["defaults"]["steps"] == 4 and body["defaults"]["maxSize"] == 768
    assert body["feedback"]["fabric"] is True and "note" in body["feedback"]
    assert "get" in doc["paths"]["/v1/model"]


@pytest.mark.asyncio(loop_scope="module")
async def test_turbo_limits_are_refused_naming_them(served: Served) -> None:
    for params, why in ((common_pb2.GenerationParams(prompt="a", width=776, height=64), "8-768"),
                        (common_pb2.GenerationParams(prompt="a", steps=5), "steps must be in 1-4")):
        call = served.gateway.Generate(timeout=30)
        await call.write(generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=params)))
        await call.done_writing()
        with pytest.raises(aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in (caught.value.details() or "")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_plain_round_counts_the_models_default_steps(served: Served) -> None:
    call = served.gateway.Session()
    await call.write(Msg(start=gateway_pb2.SessionStart(params=common_pb2.GenerationParams(
        prompt="a red circle", num_images=1, seed=3))))  # steps and guidance unset: Turbo's 4 and 0
    events = await read_until(call, "round_images")
    compute = events[-1].round_images.compute
    assert (compute.steps, compute.main_image_evals) == (4, 4)  # SD-1.x's 8 (x2 for CFG) before GetModelInfo
    await call.done_writing()
    call.cancel()
