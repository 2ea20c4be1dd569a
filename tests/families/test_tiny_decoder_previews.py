"""Previews from a TAESD-style tiny decoder (``taesd/`` in the model folder): output-size images of the x0
estimate, fed the latents its config asks for; without one, the linear map as before.

RANDOM WEIGHTS (the folder and the tiny decoder): these prove the wiring and the scaling, not what a preview
looks like."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderTiny
from PIL import Image
from structlog.testing import capture_logs

from philip.generation.requests import GenerationParams, RequestResolver
from philip.models.pipelines import load_pipeline
from philip.models.tiny_decoder import load_tiny_decoder
from philip.previews import PreviewEncoder
from services.generator.batching import WorkItem
from services.generator.engine import DiffusionEngine
from services.generator.events import JobEvent, Preview


def _tiny_autoencoder(folder: Path, *, latent_channels: int = 4, scaling_factor: float = 1.0,
                      shift_factor: float = 0.0) -> Path:
    """An AutoencoderTiny upsampling 4x (the tiny folders' VAE downscale): three decoder levels, 8 channels."""
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=latent_channels,
                    scaling_factor=scaling_factor, shift_factor=shift_factor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_with_taesd(sd1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("taesd-model") / "tiny-sd1"
    shutil.copytree(sd1_dir, folder)  # the shared folder stays without one
    _tiny_autoencoder(folder / "taesd")
    return folder


@pytest.fixture(scope="module")
def pipe(model_with_taesd: Path) -> Any:
    return load_pipeline(model_with_taesd)


def _x0(pipe: Any, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, pipe.vae.config.latent_channels, 16, 16, generator=torch.Generator().manual_seed(1))


def test_tiny_decoder_previews_are_output_size(pipe: Any, model_with_taesd: Path) -> None:
    with capture_logs() as logs:
        encoder = PreviewEncoder.for_pipeline(pipe, model_with_taesd, fit_images=2)
    assert encoder.tiny is not None and encoder.tiny.folder == "taesd"
    assert any(entry["event"] == "previews.tiny_decoder" for entry in logs)
    x0 = _x0(pipe)
    fast = encoder.encode_fast(x0)
    assert [image.size for image in fast] == [(64, 64)] * 2  # the output size: 16 latent px x 4
    assert [image.size for image in encoder.encode_linear(x0)] == [(16, 16)] * 2  # the fallback is still there


def test_without_a_tiny_decoder_previews_stay_linear(pipe: Any, sd1_dir: Path) -> None:
    assert load_tiny_decoder(sd1_dir, pipe) is None
    encoder = PreviewEncoder(weights=torch.ones(4, 3).numpy() * 0.1, bias=torch.zeros(3).numpy())
    assert [image.size for image in encoder.encode_fast(_x0(pipe, 1))] == [(16, 16)]


def test_latents_are_scaled_as_the_tiny_config_says(pipe: Any, tmp_path: Path) -> None:
    _tiny_autoencoder(tmp_path / "taesd", scaling_factor=2.0, shift_factor=0.5)
    tiny = load_tiny_decoder(tmp_path, pipe)
    assert tiny is not None
    seen: list[torch.Tensor] = []
    tiny.vae.decoder.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x0 = _x0(pipe, 1)
    tiny.decode(x0)
    torch.testing.assert_close(seen[0], x0 / 2.0 + 0.5)  # what diffusers' pipelines feed a vae they replace


def test_a_tiny_decoder_of_other_latents_is_skipped(pipe: Any, tmp_path: Path) -> None:
    _tiny_autoencoder(tmp_path / "taef1", latent_channels=16)
    with capture_logs() as logs:
        assert load_tiny_decoder(tmp_path, pipe) is None
    assert any(entry["event"] == "previews.tiny_decoder_mismatch" for entry in logs)


def test_the_generators_default_previews_use_it(model_with_taesd: Path) -> None:
    engine = DiffusionEngine.load(model_with_taesd)
    resolver = RequestResolver(native_size=engine.native_size, schedulers=engine.schedulers, defaults=engine.defaults)
    request = resolver.resolve(GenerationParams(prompt="a circle", width=64, height=64, steps=4, preview_every=2,
                                                seed=3))
    events: list[JobEvent] = []
    asyncio.run(engine.run([WorkItem("job-taesd", request, events.append, preview_every=2)]))
    engine.close()
    previews = [event for event in events if isinstance(event, Preview)]
    assert previews and all(Image.open(io.BytesIO(image.png)).size == (64, 64)
                            for preview in previews for image in preview.images)  # linear ones are 16 x 16
