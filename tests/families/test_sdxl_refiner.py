"""The refiner on the tiny SDXL folder: a plain round, and a FABRIC round whose reference pass gets SDXL's added
conditions (the pooled embedding and the time ids) and whose images differ from the plain round's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from philip.feedback_weights import FeedbackWeights
from philip.models.conditioning import unconditional
from philip.models.pipelines import load_pipeline
from philip.previews import PreviewEncoder
from services.refiner.rounds import Feedback, FeedbackImage, FeedbackRound, RoundParams, RoundRunner

PARAMS = RoundParams(prompt="a red circle", width=64, height=64, steps=4, guidance=5.0, scheduler="dpm++",
                     num_images=2, seed=10)
NO_FABRIC = FeedbackWeights(min_weight=0.0, max_weight=0.0)


@pytest.fixture(scope="module")
def pipe(sdxl_dir: Path) -> Any:
    return load_pipeline(sdxl_dir)


@pytest.fixture(scope="module")
def runner(pipe: Any, sdxl_dir: Path) -> RoundRunner:
    return RoundRunner(pipe, previews=PreviewEncoder.for_pipeline(pipe, sdxl_dir))


@pytest.fixture(scope="module")
def first(runner: RoundRunner) -> FeedbackRound:
    return runner.run(PARAMS, Feedback())


def test_a_plain_round(runner: RoundRunner, first: FeedbackRound) -> None:
    assert len(first.images) == 2 and all(i.image.size == (64, 64) for i in first.images)
    assert first.compute.reference_image_evals == 0 and first.compute.main_image_evals == 4 * 2 * 2
    previews: list[tuple[int, int]] = []
    runner.run(PARAMS, Feedback(), preview_every=2, on_preview=lambda step, images: previews.append(
        (step, len(images))))
    assert previews == [(2, 2), (4, 2)]


def test_a_fabric_round_conditions_the_reference_pass_as_sdxl_needs(runner: RoundRunner, pipe: Any,
                                                                     first: FeedbackRound) -> None:
    liked = FeedbackImage("img-0", first.images[0].image, first.images[0].origin)
    disliked = FeedbackImage("img-1", first.images[1].image, first.images[1].origin)
    seen: list[dict[str, Any]] = []

    def spy(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        added = kwargs.get("added_cond_kwargs") or {}
        seen.append({k: tuple(v.shape) for k, v in added.items()} | {"batch": args[0].shape[0]})

    hook = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        params = dataclasses.replace(PARAMS, seed=20)
        feedback = Feedback(liked=(liked,), disliked=(disliked,), diversity=0.3)
        fabric = runner.run(params, feedback)
        plain = runner.run(params, dataclasses.replace(feedback, weights=NO_FABRIC))
    finally:
        hook.remove()
    assert fabric.compute.reference_image_evals == 4 * 2 and plain.compute.reference_image_evals == 0
    projection = pipe.text_encoder_2.config.projection_dim
    references = [s for s in seen if s["batch"] == 2]  # one pass of 1 like + 1 dislike per step (the main: 4 rows)
    assert len(references) == 4
    assert all(s["text_embeds"] == (2, projection) and s["time_ids"] == (2, 6) for s in references)
    differences = [np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).mean()
                   for a, b in zip(fabric.images, plain.images, strict=True)]
    assert all(d > 0 for d in differences), differences
    # Same seeds and steering: only FABRIC's attention differs.
    assert [i.origin for i in fabric.images] == [i.origin for i in plain.images]


def test_no_prompt_is_zeros_for_sdxl_and_encoded_for_sd1(pipe: Any, sd1_dir: Path) -> None:
    sdxl = unconditional(pipe)
    assert sdxl.pooled is not None and not sdxl.embeds.any() and not sdxl.pooled.any()
    assert sdxl.embeds.shape[-1] == pipe.unet.config.cross_attention_dim
    sd1 = unconditional(load_pipeline(sd1_dir))
    assert sd1.pooled is None and sd1.embeds.any() and isinstance(sd1.embeds, torch.Tensor)
