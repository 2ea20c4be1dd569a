"""Feedback rounds on a tiny random-weight pipeline: plain round 1, FABRIC + steering, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import services.refiner.rounds as rounds
from philip.exploration import RoundChoice
from philip.models.pipelines import make_scheduler
from philip.rpc.errors import Cancelled, FailedPrecondition, InvalidArgument
from philip.tiny.dataset import prompt_vocabulary
from services.refiner.explore import PromptVocabulary
from services.refiner.fabric import FeedbackWeights
from services.refiner.rounds import Feedback, FeedbackImage, NoiseOrigin, RoundParams, RoundRunner
from services.refiner.seeds import initial_noise

torch.set_num_threads(1)  # a training job shares this machine

PARAMS = RoundParams(prompt="red circle", negative_prompt="blurry", width=128, height=128, steps=3,
                     guidance=5.0, scheduler="euler_a", num_images=2, seed=40)
NO_FABRIC = FeedbackWeights(min_weight=0.0, max_weight=0.0)


@pytest.fixture
def runner(tiny_pipe: Any) -> Iterator[RoundRunner]:
    r = RoundRunner(tiny_pipe)
    yield r
    r.close()


@pytest.fixture
def unet_calls(tiny_pipe: Any) -> Iterator[list[int]]:
    """Batch size of every UNet call (main and reference passes)."""
    sizes: list[int] = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a, kw: sizes.append(a[0].shape[0]), with_kwargs=True)
    yield sizes
    handle.remove()


@pytest.fixture
def initial_latents(tiny_pipe: Any, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The ``latents`` argument each pipeline call hands to ``prepare_latents`` (unscaled noise)."""
    seen: list[torch.Tensor] = []
    original = tiny_pipe.prepare_latents

    def spy(*args: Any, **kwargs: Any) -> Any:
        latents = kwargs.get("latents", args[7] if len(args) > 7 else None)
        assert latents is not None, "a round always passes its initial noise"
        seen.append(latents.clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_pipe, "prepare_latents", spy)
    return seen


def pixels(images: Any) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def liked(round_: Any, k: int, image_id: str) -> FeedbackImage:
    return FeedbackImage(image_id, round_.images[k].image, round_.images[k].origin)


def test_round_one_without_feedback_is_a_plain_batch(runner: RoundRunner, tiny_pipe: Any) -> None:
    first = runner.run(PARAMS, Feedback())

    base = tiny_pipe.scheduler
    tiny_pipe.scheduler = make_scheduler(tiny_pipe, PARAMS.scheduler)  # ancestral: scheduler noise matters too
    try:
        plain = tiny_pipe([PARAMS.prompt] * 2, negative_prompt=[PARAMS.negative_prompt] * 2, width=128, height=128,
                          num_inference_steps=PARAMS.steps, guidance_scale=PARAMS.guidance,
                          generator=[torch.Generator().manual_seed(PARAMS.seed + i) for i in range(2)]).images
    finally:
        tiny_pipe.scheduler = base
    np.testing.assert_array_equal(pixels(i.image for i in first.images), pixels(plain))
    assert [i.seed for i in first.images] == [40, 41]
    assert [i.origin for i in first.images] == [NoiseOrigin(40), NoiseOrigin(41)]
    assert all(i.steered_from is None for i in first.images)
    assert first.compute.steps == 3
    assert first.compute.main_image_evals == 3 * 2 * 2  # steps x images x CFG halves
    assert first.compute.reference_image_evals == 0


def test_likes_change_the_round_and_cost_reference_passes(runner: RoundRunner, unet_calls: list[int]) -> None:
    params = dataclasses.replace(PARAMS, scheduler="dpm++")
    first = runner.run(params, Feedback())
    feedback = Feedback(liked=(liked(first, 0, "a"),), disliked=(liked(first, 1, "b"),), diversity=0.5)
    unet_calls.clear()
    second = runner.run(dataclasses.replace(params, seed=90), feedback)

    assert not np.array_equal(pixels(i.image for i in second.images), pixels(i.image for i in first.images))
    n_refs = 2  # one liked + one disliked, both active every step (min_weight 0.1 > 0)
    assert second.compute.main_image_evals == 3 * 2 * 2
    assert second.compute.reference_image_evals == 3 * n_refs
    assert second.compute.total_image_evals == sum(unet_calls) == 3 * (4 + n_refs)
    assert [i.steered_from for i in second.images] == ["a", "a"]
    assert second.images[1].origin == NoiseOrigin(40, ((91, 0.5),))
    assert second.images[1].seed == 91
    # Both images start near the same liked noise but differ by their fresh parts.
    assert not np.array_equal(np.asarray(second.images[0].image), np.asarray(second.images[1].image))


def test_steered_noise_is_recorded_and_redrawn(runner: RoundRunner, initial_latents: list[torch.Tensor]) -> None:
    shape = (1, 4, 128 // runner.pipe.vae_scale_factor, 128 // runner.pipe.vae_scale_factor)
    a = FeedbackImage("a", _blank(), NoiseOrigin(7))
    b = FeedbackImage("b", _blank(), NoiseOrigin(8, ((100, 0.3),)))  # itself steered in an earlier round
    for diversity in (0.0, 0.4):
        initial_latents.clear()
        params = dataclasses.replace(PARAMS, num_images=3, steps=1)
        out = runner.run(params, Feedback(liked=(a, b), diversity=diversity))
        passed = initial_latents[0]
        assert [i.steered_from for i in out.images] == ["b", "a", "b"]  # newest like first, cycling
        for k, image in enumerate(out.images):
            torch.testing.assert_close(image.origin.noise(shape), passed[k : k + 1], rtol=0, atol=0)
        if diversity == 0.0:
            torch.testing.assert_close(passed[1:2], initial_noise(7, shape), rtol=0, atol=0)
            torch.testing.assert_close(passed[0:1], b.origin.noise(shape), rtol=0, atol=0)
        else:
            assert not torch.equal(passed[1:2], initial_noise(7, shape))


def test_diversity_zero_without_attention_feedback_reproduces_the_liked_image(runner: RoundRunner) -> None:
    params = dataclasses.replace(PARAMS, scheduler="dpm++", num_images=1)
    first = runner.run(params, Feedback())
    again = runner.run(dataclasses.replace(params, seed=500),
                       Feedback(liked=(liked(first, 0, "a"),), weights=NO_FABRIC, diversity=0.0))
    np.testing.assert_array_equal(np.asarray(again.images[0].image), np.asarray(first.images[0].image))
    assert again.compute.reference_image_evals == 0


def test_reference_latents_are_encoded_once(runner: RoundRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    original = rounds.encode_images

    def counting(pipe: Any, images: Any, **kwargs: Any) -> torch.Tensor:
        encoded.append(len(images))
        return original(pipe, images, **kwargs)

    monkeypatch.setattr(rounds, "encode_images", counting)
    params = dataclasses.replace(PARAMS, steps=1, num_images=1)
    a, b = FeedbackImage("a", _blank(), NoiseOrigin(1)), FeedbackImage("b", _blank(), NoiseOrigin(2))
    runner.run(params, Feedback(liked=(a,)))
    runner.run(params, Feedback(liked=(a, b)))
    assert encoded == [1, 1]


def test_cancel_stops_within_one_step(runner: RoundRunner, unet_calls: list[int]) -> None:
    cancel = threading.Event()
    steps: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> None:
        steps.append((step, total))
        cancel.set()

    with pytest.raises(Cancelled, match="after step 1 of 6"):
        runner.run(dataclasses.replace(PARAMS, steps=6), Feedback(), cancel=cancel, on_step=on_step)
    assert steps == [(1, 6)]
    assert len(unet_calls) == 1


async def test_async_refine_reports_progress_on_the_loop(runner: RoundRunner) -> None:
    loop_thread = threading.get_ident()
    steps: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> None:
        assert threading.get_ident() == loop_thread
        steps.append((step, total))

    out = await runner.refine(PARAMS, Feedback(), on_step=on_step)
    await asyncio.sleep(0)  # progress scheduled just before the result
    assert len(out.images) == 2
    assert steps == [(1, 3), (2, 3), (3, 3)]


async def test_cancelling_the_task_stops_the_worker(runner: RoundRunner, unet_calls: list[int]) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(runner.refine(dataclasses.replace(PARAMS, steps=50), Feedback(),
                                             on_step=lambda step, total: started.set()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    calls = len(unet_calls)
    assert calls < 50
    await asyncio.sleep(0.05)
    assert len(unet_calls) == calls  # the worker has stopped, the pipeline is free


@pytest.mark.parametrize(("change", "field"), [({"num_images": 0}, "num_images"), ({"steps": 0}, "steps"),
                                               ({"width": 100}, "width"),
                                               ({"seed": -1}, "seed"), ({"seed": 2**63 - 1}, "seed"),
                                               ({"scheduler": "plms"}, "scheduler")])
def test_bad_params_name_the_field(runner: RoundRunner, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        runner.run(dataclasses.replace(PARAMS, **change), Feedback())
    assert err.value.field == field


def test_bad_diversity_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        Feedback(diversity=1.5)
    assert err.value.field == "diversity"


def _blank() -> Image.Image:
    return Image.new("RGB", (128, 128), (200, 30, 30))


def test_exploration_draws_its_share_of_the_images_from_asked_captions(tiny_pipe: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[list[str]] = []
    original = tiny_pipe.encode_prompt

    def spy(prompt: Any, *args: Any, **kwargs: Any) -> Any:
        encoded.append(list(prompt))
        return original(prompt, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe, "encode_prompt", spy)
    vocabulary = PromptVocabulary.from_json(prompt_vocabulary())
    runner = RoundRunner(tiny_pipe, vocabulary=vocabulary)
    params = dataclasses.replace(PARAMS, prompt="a circle", num_images=4, steps=2, width=64, height=64)
    history = (RoundChoice(("a circle",) * 4, 0, 1),)
    try:
        out = runner.run(params, Feedback(weights=NO_FABRIC, explore=0.5, history=history))
        prompts = [i.prompt for i in out.images]
        assert encoded[-1] == prompts  # what each image says it was drawn from is what the UNet was given
        assert all(vocabulary.parse(p) is not None and "circle" in p for p in prompts[:2])
        assert prompts[2:] == ["a circle"] * 2
        assert out.compute.reference_image_evals == 0
        with pytest.raises(InvalidArgument, match="explore"):
            Feedback(explore=1.5)
    finally:
        runner.close()
    plain = RoundRunner(tiny_pipe)  # a model folder without a prompt vocabulary
    try:
        with pytest.raises(FailedPrecondition, match="vocabulary"):
            plain.run(params, Feedback(explore=1.0))
    finally:
        plain.close()


def test_fabric_conditions_only_the_images_exploration_did_not_ask_for(tiny_pipe: Any) -> None:
    runner = RoundRunner(tiny_pipe, vocabulary=PromptVocabulary.from_json(prompt_vocabulary()))
    params = dataclasses.replace(PARAMS, prompt="a circle", num_images=4)
    refs = (FeedbackImage("a", _blank(), NoiseOrigin(7)),)
    history = (RoundChoice(("a circle",) * 4, 0, 1),)
    try:
        fabric = runner.run(params, Feedback(liked=refs, disliked=refs, explore=0.5, history=history))
        plain = runner.run(params, Feedback(liked=refs, disliked=refs, weights=NO_FABRIC, explore=0.5,
                                            history=history))
        everything = runner.run(params, Feedback(liked=refs, disliked=refs, explore=1.0, history=history))
    finally:
        runner.close()
    a, b = pixels(i.image for i in fabric.images), pixels(i.image for i in plain.images)
    np.testing.assert_array_equal(a[:2], b[:2])  # explored images: the same with FABRIC on or off
    assert not np.array_equal(a[2:], b[2:])  # the others attend to the references
    assert fabric.compute.reference_image_evals > 0
    assert everything.compute.reference_image_evals == 0  # nothing left to condition: no reference passes
