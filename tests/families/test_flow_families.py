"""SD3 and Flux on their tiny folders (random weights: wiring only): they load as their families with their
flow scheduler only, generate a merged batch with previews, the previews' x0 estimate (x_t - sigma v, Flux's
tokens unpacked) is exact at the last step, a scheduler of the other kind is refused both ways, and a feedback
round runs on seed steering alone (no FABRIC on joint attention)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from philip.generation.requests import GenerationParams, RequestResolver
from philip.models.conditioning import encode_prompts, prompt_kwargs, unconditional
from philip.models.families import FLUX, SD3, family_of, generation_defaults
from philip.models.pipelines import load_pipeline, make_scheduler, native_size, schedulers_for
from philip.rpc.errors import InvalidArgument
from services.generator.engine import DiffusionEngine
from services.generator.events import JobEvent, Result
from services.refiner.rounds import Feedback, FeedbackImage, FeedbackRound, RoundParams, RoundRunner
from tests.families.engine_batches import check_a_merged_batch_with_previews, work_item
from tests.generator.x0_check import assert_last_x0_is_the_final_latent

FAMILIES = ["sd3", "flux"]


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request: pytest.FixtureRequest, tiny_families: dict[str, Path]) -> DiffusionEngine:
    return DiffusionEngine.load(tiny_families[request.param])  # fits the preview projection on 16-channel latents


def test_each_loads_as_its_family_with_its_own_defaults(engine: DiffusionEngine) -> None:
    pipe = engine.pipe
    family = family_of(pipe)
    assert type(pipe).__name__ == family.pipeline_class and family in (SD3, FLUX)
    assert family.flow_matching and not family.fabric and family.cfg == (family is SD3)
    assert engine.schedulers == schedulers_for(pipe) == ("flow_euler",) and native_size(pipe) == 64
    expected = {"sd3": (28, 7.0), "flux": (4, 0.0)}[family.name]  # tiny Flux has no guidance embedding: schnell
    assert (engine.defaults.steps, engine.defaults.guidance, engine.defaults.scheduler) == (*expected, "flow_euler")
    assert engine.previews.weights.shape == (16, 3)



def test_model_info_says_dislikes_act_only_through_exploration(engine: DiffusionEngine) -> None:
    """Without FABRIC nothing carries a disliked image into the denoiser, SD3's CFG notwithstanding (a round with
    dislikes only equals the plain round: test_a_round_with_likes_steers_seeds_without_fabric)."""
    feedback = engine.model_info().feedback
    assert not feedback.fabric and not feedback.dislikes_act and feedback.exploration and feedback.seed_steering
    assert "only through seed steering and prompt exploration" in feedback.note and "FABRIC" in feedback.note
    assert ("negative prompts do nothing" in feedback.note) == (family_of(engine.pipe) is FLUX)

def test_a_flux_with_guidance_embedding_gets_dev_defaults(tmp_path: Path, flux_dir: Path) -> None:
    shutil.copy(flux_dir / "model_index.json", tmp_path / "model_index.json")
    (tmp_path / "transformer").mkdir()
    config = json.loads((flux_dir / "transformer" / "config.json").read_text())
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({**config, "guidance_embeds": True}))
    defaults, source = generation_defaults(tmp_path, FLUX)
    assert (defaults.steps, defaults.guidance, source) == (28, 3.5, "built-in (Flux)")


def test_schedulers_of_the_other_kind_are_refused_both_ways(engine: DiffusionEngine, sd1_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot use scheduler 'dpm\+\+'; choose one of flow_euler$"):
        make_scheduler(engine.pipe, "dpm++")
    sd1 = load_pipeline(sd1_dir)
    accepted = r"dpm\+\+, euler, euler_a, ddim, lcm$"
    with pytest.raises(ValueError, match=rf"cannot use scheduler 'flow_euler'; choose one of {accepted}"):
        make_scheduler(sd1, "flow_euler")
    resolver = RequestResolver(native_size=64, schedulers=engine.schedulers, defaults=engine.defaults)
    with pytest.raises(InvalidArgument, match="scheduler must be one of flow_euler; got 'euler'"):
        resolver.resolve(GenerationParams(prompt="a red circle", scheduler="euler"))


def test_a_merged_batch_generates_with_previews(engine: DiffusionEngine) -> None:
    check_a_merged_batch_with_previews(engine, steps=3)


def test_x0_estimate_of_the_last_step_is_the_final_latent(engine: DiffusionEngine) -> None:
    assert_last_x0_is_the_final_latent(engine, "flow_euler", size=64)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float)


def test_a_round_with_likes_steers_seeds_without_fabric(engine: DiffusionEngine) -> None:
    runner = RoundRunner(engine.pipe, previews=engine.previews)
    params = RoundParams(prompt="a red circle", width=64, height=64, steps=3, guidance=engine.defaults.guidance,
                         scheduler="flow_euler", num_images=2, seed=10)
    first = runner.run(params, Feedback())
    liked = FeedbackImage("img-0", first.images[0].image, first.images[0].origin)
    disliked = FeedbackImage("img-1", first.images[1].image, first.images[1].origin)
    later = dataclasses.replace(params, seed=20)
    previews: list[int] = []
    steered = runner.run(later, Feedback(liked=(liked,), disliked=(disliked,), diversity=0.3), preview_every=1,
                         on_preview=lambda step, images: previews.append(step))
    plain = runner.run(later, Feedback())
    dislikes_only = runner.run(later, Feedback(disliked=(disliked,)))
    assert previews == [1, 2, 3] and steered.compute.reference_image_evals == 0
    assert [i.origin for i in steered.images] == [liked.origin.steered(20 + i, 0.3) for i in range(2)]
    assert all(i.steered_from == "img-0" for i in steered.images)
    assert all(np.abs(_pixels(a.image) - _pixels(b.image)).mean() > 0
               for a, b in zip(steered.images, plain.images, strict=True))
    # Nothing for a dislike to act through: no FABRIC, no steering from dislikes (and Flux has no CFG branch).
    assert _same(dislikes_only, plain)


def _same(a: FeedbackRound, b: FeedbackRound) -> bool:
    return all(np.array_equal(_pixels(x.image), _pixels(y.image)) for x, y in zip(a.images, b.images, strict=True))


def test_a_plain_round_draws_the_noise_the_pipeline_draws(engine: DiffusionEngine) -> None:
    # The refiner hands its own noise to the pipeline (packed into tokens for Flux); unsteered, it is exactly what
    # the pipeline draws from the same seed, so a generator's image and a refiner's round-1 image agree.
    runner = RoundRunner(engine.pipe)
    params = RoundParams(prompt="a red circle", width=64, height=64, steps=2, guidance=engine.defaults.guidance,
                         scheduler="flow_euler", num_images=1, seed=5)
    [image] = runner.run(params, Feedback()).images
    events: list[JobEvent] = []
    asyncio.run(engine.run([work_item(engine, events, 2, prompt="a red circle", num_images=1, seed=5,
                                      guidance=engine.defaults.guidance)]))
    result = events[-1]
    assert isinstance(result, Result)
    generated = Image.open(io.BytesIO(result.images[0].png))
    assert np.abs(_pixels(generated) - _pixels(image.image)).max() <= 1  # PNG round trip, kernel rounding


def test_prompts_are_encoded_row_by_row(engine: DiffusionEngine) -> None:
    # SD3: CLIP-L + CLIP-G states padded to T5's width, then T5's tokens; both projections pooled. Flux: T5's tokens
    # and CLIP's pooled output. Either way an image's conditioning must not depend on its batch mates.
    pipe = engine.pipe
    mixed, alone = encode_prompts(pipe, ["a red circle", "a blue star"]), encode_prompts(pipe, ["a blue star"])
    assert mixed.pooled is not None and alone.pooled is not None
    assert torch.allclose(mixed.embeds[1], alone.embeds[0], atol=1e-5)
    assert torch.allclose(mixed.pooled[1], alone.pooled[0], atol=1e-5)
    tokens, pooled = {"sd3": (pipe.tokenizer_max_length + 256, 48), "flux": (512, 32)}[family_of(pipe).name]
    assert mixed.embeds.shape == (2, tokens, 48) and mixed.pooled.shape == (2, pooled)
    assert unconditional(pipe).embeds.shape == (1, tokens, 48)
    kwargs = prompt_kwargs(pipe, ["a red circle"], ["blurry"])
    assert kwargs == ({"prompt": ["a red circle"], "negative_prompt": ["blurry"]} if family_of(pipe) is SD3
                      else {"prompt": ["a red circle"]})  # Flux: no unconditional branch for a negative
