"""Feedback rounds: round n+1 of a prompt from the likes and dislikes of rounds 1..n.

A round is one plain ``StableDiffusionPipeline`` call with these plugged in:
* :class:`~services.refiner.fabric.FabricConditioner` lets the images attend to the liked and
  disliked images (FABRIC), and counts the UNet work, reference passes included;
* the initial latents are steered (:func:`~services.refiner.seeds.steer_noise`) from the liked
  images' own initial noise, so liked compositions are revisited with ``diversity`` of variation;
* with ``explore`` > 0, that share of the images is drawn from full captions prompt exploration
  asks for (:func:`~services.refiner.explore.explore_round`), the rest from the round's prompt.

Every image's initial noise is recorded as a :class:`~services.refiner.round_types.NoiseOrigin` (a seed plus
the chain of steering steps that led to it), from which :meth:`NoiseOrigin.noise` redraws it exactly, so a
steered image can itself be liked and steered from in a later round. The round's value types live in
:mod:`services.refiner.round_types`.

:meth:`RoundRunner.run` is synchronous and meant for a worker thread (the pipeline is not thread-safe);
:meth:`RoundRunner.refine` is its asyncio face, on the device's worker thread (:mod:`philip.diffusion`)::

    runner = RoundRunner(pipe)
    params = RoundParams(prompt="a red circle", width=128, height=128, steps=20, guidance=6.0,
                         scheduler="dpm++", num_images=4, seed=1000)
    first = await runner.refine(params, Feedback())                       # round 1: a plain batch
    liked = FeedbackImage("img-2", first.images[2].image, first.images[2].origin)
    second = await runner.refine(replace(params, seed=2000), Feedback(liked=(liked,), diversity=0.3))
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from philip.diffusion.executors import post_to_loop
from philip.diffusion.run import Denoiser
from philip.exploration import SlotBelief
from philip.models.adapters import AdapterSwitch
from philip.models.conditioning import PromptEmbeds, unconditional
from philip.models.pipelines import SCHEDULERS
from philip.previews import PreviewEncoder
from philip.rpc.errors import FailedPrecondition, InvalidArgument, PhilipError
from services.refiner.batch_round import RoundWork, run_batch
from services.refiner.explore import SlotVocabulary, explore_round
from services.refiner.fabric import encode_images
from services.refiner.fabric_layers import resolve_layers
from services.refiner.round_types import (  # the value types live there; re-exported for callers of this module
    MAX_SEED,
    Feedback,
    FeedbackImage,
    FeedbackRound,
    NoiseOrigin,
    PreviewCallback,
    RoundParams,
    StepCallback,
)
from services.refiner.round_types import RoundCompute as RoundCompute
from services.refiner.round_types import RoundImage as RoundImage


class RoundRunner:
    """Runs feedback rounds on one pipeline; caches reference latents by image id."""

    def __init__(self, pipe: Any, *, previews: PreviewEncoder | None = None, cache_size: int = 256,
                 adapters: AdapterSwitch | None = None, vocabulary: SlotVocabulary | None = None,
                 fabric_layers: str = "") -> None:
        self.pipe = pipe
        self.fabric_layers = resolve_layers(fabric_layers, pipe)  # "" = the family's (services.refiner.fabric_layers)
        self.vocabulary = vocabulary  # prompt exploration needs one (the model's own or the deployment's)
        self.previews = previews
        self.adapters = adapters
        self.cache_size = cache_size
        self.denoiser = Denoiser(pipe)
        self._latents: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()
        self._empty_prompt: PromptEmbeds | None = None

    def close(self) -> None:
        """Wait for this runner's rounds on the device's thread. Blocking."""
        self.denoiser.close()

    async def refine(
        self,
        params: RoundParams,
        feedback: Feedback,
        *,
        cancel: threading.Event | None = None,
        on_step: StepCallback | None = None,
        preview_every: int = 0,
        on_preview: PreviewCallback | None = None,
    ) -> FeedbackRound:
        """:meth:`run` on the device's worker thread; ``on_step``/``on_preview`` are called on the event loop.

        Cancelling the awaiting task sets ``cancel`` and waits (at most one step) for the worker
        to stop, so the pipeline is free when the ``CancelledError`` propagates.
        """
        loop = asyncio.get_running_loop()
        work = RoundWork(params, feedback, cancel if cancel is not None else threading.Event(),
                         on_step and functools.partial(post_to_loop, loop, on_step), preview_every,
                         on_preview and functools.partial(post_to_loop, loop, on_preview))
        [outcome] = await self.refine_batch([work])
        if isinstance(outcome, PhilipError):
            raise outcome
        return outcome

    def run(
        self,
        params: RoundParams,
        feedback: Feedback,
        *,
        cancel: threading.Event | None = None,
        on_step: StepCallback | None = None,
        preview_every: int = 0,
        on_preview: PreviewCallback | None = None,
    ) -> FeedbackRound:
        """Round n+1, blocking. Raises :class:`~philip.rpc.errors.Cancelled` when ``cancel`` is set.

        With ``previews`` and ``preview_every`` > 0, ``on_preview`` gets linear previews of the x0
        estimate every ``preview_every`` steps (and at the last step).
        """
        work = RoundWork(params, feedback, cancel if cancel is not None else threading.Event(), on_step,
                         preview_every, on_preview)
        [outcome] = self.run_batch([work])
        if isinstance(outcome, PhilipError):
            raise outcome
        return outcome

    def run_batch(self, works: Sequence[RoundWork]) -> list[FeedbackRound | PhilipError]:
        """Several requests' rounds in one pipeline call (they must share a :attr:`RoundWork.key`), blocking; each
        gets its round or the error that stopped it (:mod:`services.refiner.batch_round`)."""
        return run_batch(self, works)

    async def refine_batch(self, works: Sequence[RoundWork]) -> list[FeedbackRound | PhilipError]:
        """:meth:`run_batch` on the device's worker thread. Cancelling the awaiting task cancels every work and
        waits (at most one step) for the pipeline to be free."""
        works = list(works)

        def cancel_all() -> None:
            for work in works:
                work.cancel.set()

        return await self.denoiser.worker.run(self.run_batch, works, stop=cancel_all)

    # ---- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _likes_newest_first(feedback: Feedback) -> list[FeedbackImage]:
        """The liked round images seeds are steered from (uploaded references have no noise of their own)."""
        return [f for f in reversed(feedback.liked) if not f.reference]

    def prompts(self, params: RoundParams, feedback: Feedback,
                 n: int) -> tuple[list[str], list[SlotBelief], int]:
        """The first ``n`` images ask for explored prompts (fewer when the prompt and the pins leave fewer distinct
        targets); the rest take the round's prompt. Returns the prompts, the beliefs and how many explore."""
        if n == 0:
            return [params.prompt] * params.num_images, [], 0
        if self.vocabulary is None:
            raise FailedPrecondition("weights.explore needs a vocabulary (the model folder's prompt_vocabulary.json "
                                     "or PHILIP_VOCABULARY_PATH); the served model has none (leave explore at 0)",
                                     field="weights.explore")
        explored, learned = explore_round(self.vocabulary, params.prompt, feedback.history, n, params.seed,
                                          feedback.constraints)
        return explored + [params.prompt] * (params.num_images - len(explored)), learned, len(explored)

    def parents(self, params: RoundParams, feedback: Feedback) -> list[str | None]:
        likes = self._likes_newest_first(feedback)
        return [likes[i % len(likes)].image_id if likes else None for i in range(params.num_images)]

    def plan(
        self, params: RoundParams, feedback: Feedback, shape: tuple[int, ...]
    ) -> list[tuple[NoiseOrigin, torch.Tensor, torch.Generator]]:
        """Per image: its noise origin, initial noise and the generator for the scheduler noise.

        Without likes image i is plain noise of ``seed + i``; with likes it starts near the
        (i mod likes)-th most recent liked image's noise, fresh part drawn from ``seed + i``.
        """
        likes = self._likes_newest_first(feedback)
        plan = []
        for i in range(params.num_images):
            if likes:
                origin = likes[i % len(likes)].origin.steered(params.seed + i, feedback.diversity)
            else:
                origin = NoiseOrigin(params.seed + i)
            noise, generator = origin.draw(shape)
            plan.append((origin, noise, generator))
        return plan

    def encode(self, refs: Sequence[FeedbackImage], params: RoundParams) -> torch.Tensor | None:
        """Clean latents of ``refs`` at this round's size, each image encoded once (LRU cache)."""
        if not refs:
            return None
        missing = [r for r in refs if (r.image_id, params.width, params.height) not in self._latents]
        if missing:
            encoded = encode_images(self.pipe, [r.image for r in missing], height=params.height, width=params.width)
            for ref, latent in zip(missing, encoded, strict=True):
                self._latents[(ref.image_id, params.width, params.height)] = latent[None]
        out = []
        for ref in refs:
            key = (ref.image_id, params.width, params.height)
            self._latents.move_to_end(key)
            out.append(self._latents[key])
        while len(self._latents) > self.cache_size:
            self._latents.popitem(last=False)
        return torch.cat(out)

    def empty_prompt(self) -> PromptEmbeds:
        """No prompt's embeddings (and SDXL's pooled one), for FABRIC's reference passes; encoded once."""
        if self._empty_prompt is None:
            with torch.inference_mode():
                self._empty_prompt = unconditional(self.pipe)
        return self._empty_prompt


def check_params(params: RoundParams, schedulers: Sequence[str] = tuple(SCHEDULERS)) -> None:
    """``schedulers``: the names the served model accepts (:func:`~philip.models.pipelines.schedulers_for`)."""
    if params.num_images < 1:
        raise InvalidArgument(f"num_images must be >= 1, got {params.num_images}", field="num_images")
    if not 0 <= params.seed <= MAX_SEED - params.num_images + 1:
        raise InvalidArgument(f"seed must be in 0-{MAX_SEED - params.num_images + 1} "
                              f"(image i draws from seed + i), got {params.seed}", field="seed")
    if params.scheduler not in schedulers:
        raise InvalidArgument(f"scheduler must be one of {', '.join(schedulers)}, got {params.scheduler!r}",
                              field="scheduler")
    if params.steps < 1:
        raise InvalidArgument(f"steps must be >= 1, got {params.steps}", field="steps")
    for name in ("width", "height"):
        value = getattr(params, name)
        if value < 8 or value % 8:
            raise InvalidArgument(f"{name} must be a positive multiple of 8, got {value}", field=name)
