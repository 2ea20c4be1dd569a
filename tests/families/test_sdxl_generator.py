"""The generator's engine on the tiny SDXL folder: a merged batch with previews, the x0 estimate exact at the last
step (as tests/generator checks for SD-1.x), per-image negative conditioning, and SDXL's built-in defaults."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from philip.generation.requests import GenerationParams, RequestResolver
from philip.models.conditioning import prompt_kwargs
from services.generator.batching import WorkItem
from services.generator.engine import DiffusionEngine
from services.generator.events import JobEvent, Preview, Result
from tests.generator.x0_check import assert_last_x0_is_the_final_latent


@pytest.fixture(scope="module")
def engine(sdxl_dir: Path) -> DiffusionEngine:
    return DiffusionEngine.load(sdxl_dir)  # fits the preview projection: the start-up that used to fail


def test_built_in_sdxl_defaults(engine: DiffusionEngine) -> None:
    assert engine.native_size == 1024 and engine.defaults.guidance == 5.0  # SDXL base's row (the folder has none)
    assert (engine.pipe.unet.config.sample_size * engine.pipe.vae_scale_factor) == 64


def _item(engine: DiffusionEngine, events: list[JobEvent], **params: Any) -> WorkItem:
    resolver = RequestResolver(native_size=engine.native_size, schedulers=engine.schedulers, defaults=engine.defaults)
    request = resolver.resolve(GenerationParams(width=64, height=64, steps=4, preview_every=2, **params))
    return WorkItem(f"job-{len(events)}-{params['seed']}", request, events.append, preview_every=2)


def test_a_merged_batch_generates_with_previews(engine: DiffusionEngine) -> None:
    first: list[JobEvent] = []
    second: list[JobEvent] = []
    items = [_item(engine, first, prompt="a red circle", num_images=2, seed=1),
             _item(engine, second, prompt="a blue square", negative_prompt="blurry", num_images=1, seed=9,
                   preview_mode="vae")]
    asyncio.run(engine.run(items))
    for events, count, preview_size in ((first, 2, (16, 16)), (second, 1, (64, 64))):
        previews = [e for e in events if isinstance(e, Preview)]
        assert [p.step for p in previews] == [2]  # the last step's preview is the result itself
        assert all(Image.open(io.BytesIO(i.png)).size == preview_size for p in previews for i in p.images)
        result = events[-1]
        assert isinstance(result, Result) and len(result.images) == count
        assert all((i.width, i.height) == (64, 64) for i in result.images)
    assert len({i.png for e in (first[-1], second[-1]) if isinstance(e, Result) for i in e.images}) == 3


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
