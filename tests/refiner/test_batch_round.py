"""Rounds of different sessions in one batch come out as they would alone; a cancel drops only its own."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from philip.exploration import RoundChoice
from philip.models.pipelines import load_pipeline
from philip.rpc.errors import Cancelled
from philip.tiny.dataset import prompt_vocabulary
from services.refiner.batch_round import RoundWork
from services.refiner.batching import RoundQueue
from services.refiner.explore import PromptVocabulary
from services.refiner.fabric import FeedbackWeights
from services.refiner.rounds import Feedback, FeedbackImage, FeedbackRound, RoundParams, RoundRunner

BASE = RoundParams(prompt="a circle", width=64, height=64, steps=6, guidance=4.0, scheduler="dpm++", num_images=2,
                   seed=100)
TOLERANCE = 3  # of 255: batched kernels round differently; a misrouted reference moves pixels by far more


@pytest.fixture(scope="module")
def runner() -> Iterator[RoundRunner]:
    r = RoundRunner(load_pipeline("models/philip-tiny"), vocabulary=PromptVocabulary.from_json(prompt_vocabulary()))
    yield r
    r.close()


@pytest.fixture(scope="module")
def works(runner: RoundRunner) -> list[RoundWork]:
    """Three sessions' rounds: plain; FABRIC on a like and a dislike; half explored, half FABRIC on other refs."""
    first = runner.run(dataclasses.replace(BASE, num_images=4, seed=7), Feedback())
    refs = [FeedbackImage(f"img-{i}", img.image, img.origin) for i, img in enumerate(first.images)]
    history = (RoundChoice(("a red circle on a blue background", "a green circle on a white background"), 0, 1),)
    return [
        RoundWork(BASE, Feedback()),
        RoundWork(dataclasses.replace(BASE, seed=200, prompt="a square"),
                  Feedback(liked=(refs[0],), disliked=(refs[1],), diversity=0.3)),
        RoundWork(dataclasses.replace(BASE, seed=300, num_images=3),
                  Feedback(liked=(refs[2], refs[3]), weights=FeedbackWeights(end=0.5, max_weight=0.6),
                           explore=0.34, history=history)),
    ]


def _pixels(round_: FeedbackRound) -> list[np.ndarray]:
    return [np.asarray(i.image, dtype=np.int16) for i in round_.images]


def _assert_same(batched: FeedbackRound, alone: FeedbackRound) -> None:
    for a, b in zip(_pixels(batched), _pixels(alone), strict=True):
        assert np.abs(a - b).max() <= TOLERANCE
    assert [i.prompt for i in batched.images] == [i.prompt for i in alone.images]
    assert [i.origin for i in batched.images] == [i.origin for i in alone.images]
    assert [i.steered_from for i in batched.images] == [i.steered_from for i in alone.images]
    assert batched.compute == alone.compute and batched.learned == alone.learned


def test_a_batched_round_equals_the_same_round_alone_with_and_without_fabric(runner: RoundRunner,
                                                                             works: list[RoundWork]) -> None:
    alone = [runner.run(w.params, w.feedback) for w in works]
    batched = runner.run_batch(works)
    for b, a in zip(batched, alone, strict=True):
        assert isinstance(b, FeedbackRound)
        _assert_same(b, a)
    assert alone[1].compute.reference_image_evals > 0 and alone[2].compute.reference_image_evals > 0
    assert alone[0].compute.reference_image_evals == 0
    # FABRIC matters here, so equality says each image attended to its own session's references only.
    unconditioned = runner.run(works[1].params, dataclasses.replace(works[1].feedback, liked=(), disliked=()))
    assert max(np.abs(a - b).max() for a, b in zip(_pixels(unconditioned), _pixels(alone[1]), strict=True)) > 20
    assert [i.prompt for i in alone[2].images][1:] == ["a circle", "a circle"]  # one explored, two conditioned
    assert alone[2].images[0].prompt != "a circle" and alone[2].learned


def test_cancelling_one_session_leaves_the_others_images_intact(runner: RoundRunner, works: list[RoundWork]) -> None:
    cancel = threading.Event()
    steps: list[int] = []

    def on_step(step: int, total: int) -> None:
        steps.append(step)
        if step == 2:
            cancel.set()

    doomed = dataclasses.replace(works[1], cancel=cancel, on_step=on_step)
    outcomes = runner.run_batch([works[0], doomed, works[2]])
    assert isinstance(outcomes[1], Cancelled) and "after step 2 of 6" in outcomes[1].message
    assert steps == [1, 2]  # dropped at once: no progress after the cancel
    for outcome, work in ((outcomes[0], works[0]), (outcomes[2], works[2])):
        assert isinstance(outcome, FeedbackRound)
        _assert_same(outcome, runner.run(work.params, work.feedback))


def test_rounds_that_cannot_share_a_batch_are_refused(runner: RoundRunner, works: list[RoundWork]) -> None:
    other = dataclasses.replace(works[0], params=dataclasses.replace(BASE, steps=4))
    with pytest.raises(ValueError, match="share size, steps"):
        runner.run_batch([works[0], other])


async def test_concurrent_rounds_meet_in_one_batch_and_keep_apart_what_differs(runner: RoundRunner,
                                                                               works: list[RoundWork]) -> None:
    queue = RoundQueue(runner, max_queue=8, max_batch=8, batch_window_ms=200)
    six_steps = [dataclasses.replace(w, cancel=threading.Event()) for w in works]
    four_steps = RoundWork(dataclasses.replace(BASE, steps=4, seed=900), Feedback())
    results = await asyncio.gather(*(queue.run(w) for w in [*six_steps, four_steps]))
    assert queue.batches == 2  # 7 images of 6 steps together, the 4-step round on its own
    for result, work in zip(results[:3], works, strict=True):
        _assert_same(result, runner.run(work.params, work.feedback))
    assert len(results[3].images) == 2 and results[3].compute.steps == 4
    await queue.close()


async def test_a_full_queue_says_when_to_retry(runner: RoundRunner) -> None:
    queue = RoundQueue(runner, max_queue=1, max_batch=2, batch_window_ms=500)
    first = asyncio.ensure_future(queue.run(RoundWork(BASE, Feedback())))
    await asyncio.sleep(0)
    from philip.rpc.errors import ResourceExhausted

    with pytest.raises(ResourceExhausted, match="limit 1") as info:
        await queue.run(RoundWork(BASE, Feedback()))
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await queue.close()


