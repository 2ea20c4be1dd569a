"""The generator's engine on the tiny SDXL folder: a merged batch with previews, the x0 estimate exact at the last
step (as tests/generator checks for SD-1.x), per-image negative conditioning, and SDXL's built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from philip.models.conditioning import prompt_kwargs
from services.generator.engine import DiffusionEngine
from tests.families.engine_batches import check_a_merged_batch_with_previews
from tests.generator.x0_check import assert_last_x0_is_the_final_latent


@pytest.fixture(scope="module")
def engine(sdxl_dir: Path) -> DiffusionEngine:
    return DiffusionEngine.load(sdxl_dir)  # fits the preview projection: the start-up that used to fail


def test_built_in_sdxl_defaults(engine: DiffusionEngine) -> None:
    assert engine.native_size == 1024 and engine.defaults.guidance == 5.0  # SDXL base's row (the folder has none)
    assert (engine.pipe.unet.config.sample_size * engine.pipe.vae_scale_factor) == 64


def test_a_merged_batch_generates_with_previews(engine: DiffusionEngine) -> None:
    check_a_merged_batch_with_previews(engine, steps=4)


@pytest.mark.parametrize("scheduler", ["dpm++", "euler"])
def test_x0_estimate_of_the_last_step_is_the_final_latent(engine: DiffusionEngine, scheduler: str) -> None:
    assert_last_x0_is_the_final_latent(engine, scheduler)


def test_empty_negatives_are_zeros_row_by_row(engine: DiffusionEngine) -> None:
    # SDXL base was trained with zeros for no prompt; diffusers zeroes a whole call's negatives or none, so an image
    # would depend on its batch mates. prompt_kwargs zeroes each empty one alone.
    pipe = engine.pipe
    mixed = prompt_kwargs(pipe, ["a red circle", "a blue star"], ["", "blurry"])
    alone = prompt_kwargs(pipe, ["a blue star"], ["blurry"])
    assert not mixed["negative_prompt_embeds"][0].any() and not mixed["negative_pooled_prompt_embeds"][0].any()
    assert torch.allclose(mixed["negative_prompt_embeds"][1], alone["negative_prompt_embeds"][0], atol=1e-6)
    assert torch.allclose(mixed["prompt_embeds"][1], alone["prompt_embeds"][0], atol=1e-6)
    assert mixed["pooled_prompt_embeds"].shape == (2, pipe.text_encoder_2.config.projection_dim)
