"""The engine's scheduler-agnostic x0 estimate and the preview projection, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from philip.previews import PROJECTION_FILE, PreviewEncoder, vae_fingerprint, x0_from_prediction
from services.generator.engine import DiffusionEngine
from tests.generator.x0_check import assert_last_x0_is_the_final_latent


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> DiffusionEngine:
    return DiffusionEngine.load(tiny_model_dir)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_from_prediction_inverts_the_forward_process(prediction_type: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    alpha_bar = torch.tensor(0.3)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    prediction = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction_type]
    estimate = x0_from_prediction(a * x0 + s * eps, prediction, alpha_bar, prediction_type)
    assert torch.allclose(estimate, x0, atol=1e-5)


@pytest.mark.parametrize("scheduler", ["dpm++", "euler"])
def test_x0_estimate_of_the_last_step_is_the_final_latent(engine: DiffusionEngine, scheduler: str) -> None:
    assert_last_x0_is_the_final_latent(engine, scheduler)


def test_native_size_and_schedulers(engine: DiffusionEngine) -> None:
    assert engine.native_size == 64
    assert "dpm++" in engine.schedulers and "euler_a" in engine.schedulers


def test_projection_is_saved_beside_the_model_and_reused(engine: DiffusionEngine, tiny_model_dir: Path) -> None:
    path = tiny_model_dir / PROJECTION_FILE
    saved = json.loads(path.read_text())  # written when the engine loaded
    assert len(saved["weights"]) == 4 and len(saved["weights"][0]) == 3 and len(saved["bias"]) == 3
    assert saved["vae_fingerprint"] == vae_fingerprint(tiny_model_dir)
    again = PreviewEncoder.for_pipeline(engine.pipe, tiny_model_dir)
    assert (again.weights == engine.previews.weights).all()


def test_stale_projection_is_refitted(engine: DiffusionEngine, tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "vae").symlink_to(tiny_model_dir / "vae")
    stale = PreviewEncoder(engine.previews.weights * 0, engine.previews.bias * 0, "another-vae")
    stale.save(tmp_path / PROJECTION_FILE)
    fresh = PreviewEncoder.for_pipeline(engine.pipe, tmp_path, fit_images=2)
    assert fresh.vae_fingerprint == vae_fingerprint(tiny_model_dir) and fresh.weights.any()
    assert PreviewEncoder.load(tmp_path / PROJECTION_FILE).vae_fingerprint == fresh.vae_fingerprint


def test_linear_previews_are_latent_size_unless_upscaled(engine: DiffusionEngine) -> None:
    x0 = torch.randn(3, 4, 16, 12)
    images = engine.previews.encode_linear(x0)
    assert len(images) == 3 and images[0].size == (12, 16) and images[0].mode == "RGB"
    assert engine.previews.encode_linear(x0, size=(48, 64))[0].size == (48, 64)
    assert engine.previews.encode_vae(engine.pipe, x0)[0].size == (48, 64)
