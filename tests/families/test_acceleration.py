"""The GPU speed-ups on the CPU: harmless (the same images), and PHILIP_COMPILE wraps the resnet and feed-forward
blocks only, never the attention FABRIC swaps.

Compile runs here with dynamo's "eager" backend: the same wrapping and tracing as on a GPU, without inductor's
C++ build (tens of seconds per graph on this CPU). Inductor's own numerics and speed are the GPU bench's job
(``philip bench gpu`` on a node with PHILIP_COMPILE=1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from structlog.testing import capture_logs

from philip.models import acceleration
from philip.models.acceleration import COMPILED_BLOCKS, accelerate, attention_backend
from philip.models.load_options import LoadOptions
from philip.models.pipelines import load_pipeline


def _latents(pipe: Any) -> torch.Tensor:
    out = pipe(["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=5.0, width=64, height=64,
               generator=[torch.Generator().manual_seed(s) for s in (1, 2)], output_type="latent")
    return out.images  # type: ignore[no-any-return]


def _decoded(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]  # type: ignore


@pytest.fixture()
def pipe(sd1_dir: Path) -> Any:
    pipe = load_pipeline(sd1_dir)
    pipe.vae.disable_slicing()  # the baseline: as the folder loads without speed-ups
    pipe.vae.disable_tiling()
    return pipe


def test_defaults_on_the_cpu_change_no_output(pipe: Any) -> None:
    before = _latents(pipe)
    pixels_before = _decoded(pipe, before)
    with capture_logs() as logs:
        accelerate(pipe, LoadOptions())
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert pipe.vae.tile_sample_min_size == 1024  # tiling only above 1024 px: a 64 px image never tiles
    assert not pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # GPU only
    torch.testing.assert_close(_latents(pipe), before, rtol=0, atol=0)
    torch.testing.assert_close(_decoded(pipe, before), pixels_before, rtol=1e-5, atol=1e-5)
    logged = next(entry for entry in logs if entry["event"] == "model.accelerated")
    assert logged["device"] == "cpu" and "compiled_blocks" not in logged
    assert logged["attention_processors"] == ["AttnProcessor2_0"]  # SDPA


def test_compile_wraps_resnets_and_feed_forwards_only(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _latents(pipe)
    processors = dict(pipe.unet.attn_processors)
    monkeypatch.setattr(acceleration, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    accelerate(pipe, LoadOptions(compile=True))
    compiled = [m for m in pipe.unet.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert compiled and {type(m).__name__ for m in compiled} == set(COMPILED_BLOCKS)
    assert len(compiled) == sum(type(m).__name__ in COMPILED_BLOCKS for m in pipe.unet.modules())
    assert pipe.unet.attn_processors == processors  # attention is left to FABRIC's swaps
    torch.testing.assert_close(_latents(pipe), before, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_attention_backend_names_the_kernels(pipe: Any) -> None:
    backend = attention_backend(pipe)
    assert set(backend) >= {"attention_processors", "sdpa_kernels_enabled", "flash_available", "hip", "device"}
    assert backend["hip"] == (torch.version.hip or "")
