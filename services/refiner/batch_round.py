"""Several requests' feedback rounds in one pipeline call (the refiner's batching across sessions).

Each :class:`RoundWork` keeps everything of its own: prompts (explored or not), initial noise and scheduler
generators, references, weight schedule, reference-noise seed, previews, progress and cancel. What they share
is one :class:`~philip.diffusion.run.DenoisingRun`: one UNet batch per step and one FABRIC reference pass per
step for all their references, each image attending only to its own request's
(:class:`~services.refiner.fabric.ReferenceGroup`). So an image comes out as it would alone (up to float
rounding of batched kernels). A cancelled request is dropped at the next step (its rows finish with the batch
but are neither reported nor decoded); when all are, the remaining steps are skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from philip.diffusion.callbacks import DropCancelled, RenderPreviews, ReportProgress
from philip.models.adapters import activate_adapters
from philip.models.conditioning import prompt_kwargs
from philip.models.families import family_of
from philip.models.latents import latent_grid
from philip.models.pipelines import denoiser_model, schedulers_for
from philip.previews import PreviewEncoder
from philip.rpc.errors import Cancelled, PhilipError
from services.refiner.fabric import FabricConditioner, ReferenceGroup
from services.refiner.round_types import (
    Feedback,
    FeedbackRound,
    PreviewCallback,
    RoundCompute,
    RoundImage,
    RoundParams,
    StepCallback,
)

if TYPE_CHECKING:
    from services.refiner.rounds import RoundRunner  # which imports this module


@dataclass(eq=False)
class RoundWork:
    """One request's round in a batch, with its own callbacks (called on the worker thread) and cancel flag."""

    params: RoundParams
    feedback: Feedback
    cancel: threading.Event = field(default_factory=threading.Event)
    on_step: StepCallback | None = None
    preview_every: int = 0
    on_preview: PreviewCallback | None = None
    on_start: Callable[[], None] | None = None  # the batch it rides in has taken the pipeline

    @property
    def key(self) -> tuple[Any, ...]:
        """What requests sharing a pipeline call must agree on."""
        p = self.params
        return p.width, p.height, p.steps, p.scheduler, p.guidance, tuple(sorted(p.adapter_ids))


@dataclass(eq=False)
class _RoundRows:
    """A prepared round's rows in the shared run (a ``BatchMember``), reporting through its work's callbacks."""

    work: RoundWork
    plan: list[Any]
    prompts: list[str]
    learned: list[Any]
    group: ReferenceGroup
    previews: PreviewEncoder | None
    steps_done: int = 0  # when it was dropped: the steps it had then

    @property
    def images(self) -> int:
        return self.work.params.num_images

    def check_cancelled(self, after_step: int) -> bool:
        if not self.work.cancel.is_set():
            return False
        self.steps_done = after_step  # reported as cancelled with the round's outcome
        return True

    def progress(self, step: int, total: int) -> None:
        if self.work.on_step is not None:
            self.work.on_step(step, total)

    def wants_preview(self, step: int, total: int) -> bool:
        every = self.work.preview_every
        return every > 0 and (step % every == 0 or step == total) and self.work.on_preview is not None \
            and self.previews is not None

    def preview(self, step: int, x0: torch.Tensor) -> None:
        assert self.work.on_preview is not None and self.previews is not None  # wants_preview said so
        self.work.on_preview(step, self.previews.encode_fast(x0))  # tiny decoder when the folder has one


def run_batch(runner: RoundRunner, works: Sequence[RoundWork]) -> list[FeedbackRound | PhilipError]:
    """Every work's round, or the error that stopped it (bad request, cancelled); blocking, on the worker thread."""
    from services.refiner.rounds import check_params

    if len({w.key for w in works}) > 1:
        raise ValueError("a batch's rounds must share size, steps, scheduler, guidance and adapters")
    if works:  # a batch holds one adapter set (its key); before any reference is encoded
        activate_adapters(runner.adapters, works[0].params.adapter_ids)
    outcomes: list[FeedbackRound | PhilipError | None] = [None] * len(works)
    prepared: list[_RoundRows] = []
    for k, work in enumerate(works):
        try:
            check_params(work.params, schedulers_for(runner.pipe))
            prepared.append(_prepare(runner, work))
        except PhilipError as exc:
            outcomes[k] = exc
    if prepared:
        for item, result in zip(prepared, _RoundBatch(runner, prepared).run(), strict=True):
            outcomes[works.index(item.work)] = result
    return [o for o in outcomes if o is not None]


def _prepare(runner: RoundRunner, work: RoundWork) -> _RoundRows:
    params, feedback, pipe = work.params, work.feedback, runner.pipe
    shape = (1, *latent_grid(pipe, params.height, params.width))
    plan = runner.plan(params, feedback, shape)
    prompts, learned, explored = runner.prompts(params, feedback, round(feedback.explore * params.num_images))
    # Explored images show what their prompt asks for: FABRIC would pull them toward the likes. A family without
    # FABRIC (SD3, Flux: joint attention, no attn1) needs no reference latents: steering and exploration only.
    conditioned = explored < params.num_images and family_of(pipe).fabric
    group = ReferenceGroup(params.num_images, runner.encode(feedback.liked, params) if conditioned else None,
                           runner.encode(feedback.disliked, params) if conditioned else None,
                           feedback.weights, params.seed, explored)
    return _RoundRows(work, plan, prompts, learned, group, runner.previews)


class _RoundBatch:
    """The prepared rounds' shared run, with FABRIC conditioning it, and each round's outcome from it."""

    def __init__(self, runner: RoundRunner, items: list[_RoundRows]) -> None:
        self.runner = runner
        self.items = items
        self.params = items[0].work.params

    def run(self) -> list[FeedbackRound | PhilipError]:
        runner, pipe, params, items = self.runner, self.runner.pipe, self.params, self.items
        noise = torch.cat([n for item in items for _, n, _ in item.plan]).to(device=pipe.device,
                                                                            dtype=denoiser_model(pipe).dtype)
        for item in items:
            if item.work.on_start is not None:
                item.work.on_start()
        fabric = FabricConditioner(pipe, empty_prompt_embeds=runner.empty_prompt(), layers=runner.fabric_layers,
                                   **self._fabric_groups()) if family_of(pipe).fabric else None
        run = runner.denoiser.start(items, scheduler=params.scheduler, steps=params.steps)
        # Progress first, then the cancel check: a round cancelled from its own step callback stops at once.
        latents = run(
            [ReportProgress(run), RenderPreviews(run), DropCancelled(run)], hooks=[fabric] if fabric else [],
            **prompt_kwargs(pipe, [p for item in items for p in item.prompts],
                            [item.work.params.negative_prompt for item in items for _ in range(item.images)]),
            width=params.width, height=params.height, guidance_scale=params.guidance,
            latents=noise,  # unscaled: prepare_latents multiplies by init_noise_sigma itself
            generator=[gen for item in items for _, _, gen in item.plan],  # scheduler noise (ancestral)
        )
        cfg = 2 if getattr(pipe, "do_classifier_free_guidance", False) else 1  # Flux: no such branch
        run.drop_cancelled()  # a cancel that came during the last step still wins
        decoded = dict(run.decode_live(latents))
        # The conditioner counts each request's reference passes in its groups (its own one for a single request).
        steps, groups = (fabric.main_calls, fabric.groups) if fabric else (run.step, [item.group for item in items])
        return [self._outcome(item, decoded.get(item), group, steps, cfg)
                for item, group in zip(items, groups, strict=True)]

    def _fabric_groups(self) -> dict[str, Any]:
        """One request conditions the whole batch; several each get their own rows (ReferenceGroup)."""
        if len(self.items) > 1:
            return {"groups": [item.group for item in self.items]}
        g = self.items[0].group
        return {"liked": g.liked, "disliked": g.disliked, "weights": g.weights, "seed": g.seed, "exempt": g.exempt}

    def _outcome(self, item: _RoundRows, pictures: list[Image.Image] | None, group: ReferenceGroup, steps: int,
                 cfg: int) -> FeedbackRound | PhilipError:
        if pictures is None:
            return Cancelled(f"refinement round cancelled after step {item.steps_done} of {self.params.steps}")
        parents = self.runner.parents(item.work.params, item.work.feedback)
        images = tuple(RoundImage(image=image, index=i, origin=origin, steered_from=parent, prompt=prompt)
                       for i, (image, (origin, _, _), parent, prompt) in enumerate(
                           zip(pictures, item.plan, parents, item.prompts, strict=True)))
        compute = RoundCompute(steps=steps, main_image_evals=steps * item.images * cfg,
                               reference_image_evals=group.reference_evals)
        return FeedbackRound(images=images, compute=compute, learned=tuple(item.learned))
