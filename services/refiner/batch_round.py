"""Several requests' feedback rounds in one pipeline call (the refiner's batching across sessions).

Each :class:`RoundWork` keeps everything of its own: prompts (explored or not), initial noise and scheduler
generators, references, weight schedule, reference-noise seed, previews, progress and cancel. What they share
is one UNet batch per step and one FABRIC reference pass per step for all their references, each image
attending only to its own request's (:class:`~services.refiner.fabric.ReferenceGroup`). So an image comes out as
it would alone (up to float rounding of batched kernels). A cancelled request is dropped at the next step (its
rows finish with the batch but are neither reported nor decoded); when all are, the remaining steps are skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from philip.models.adapters import activate_adapters
from philip.models.pipelines import make_scheduler
from philip.previews import UNetCapture, decode_latents, x0_estimate
from philip.rpc.errors import Cancelled, PhilipError
from services.refiner.fabric import FabricConditioner, ReferenceGroup

if TYPE_CHECKING:
    from services.refiner.rounds import (
        Feedback,
        FeedbackRound,
        PreviewCallback,
        RoundParams,
        RoundRunner,
        StepCallback,
    )


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


@dataclass
class _Prepared:
    work: RoundWork
    plan: list[Any]
    prompts: list[str]
    learned: list[Any]
    group: ReferenceGroup
    rows: slice
    steps_done: int = 0
    live: bool = True


def run_batch(runner: RoundRunner, works: Sequence[RoundWork]) -> list[FeedbackRound | PhilipError]:
    """Every work's round, or the error that stopped it (bad request, cancelled); blocking, on the worker thread."""
    from services.refiner.rounds import check_params

    if len({w.key for w in works}) > 1:
        raise ValueError("a batch's rounds must share size, steps, scheduler, guidance and adapters")
    if works:  # a batch holds one adapter set (its key); before any reference is encoded
        activate_adapters(runner.adapters, works[0].params.adapter_ids)
    outcomes: list[FeedbackRound | PhilipError | None] = [None] * len(works)
    prepared: list[_Prepared] = []
    row = 0
    for k, work in enumerate(works):
        try:
            check_params(work.params)
            item = _prepare(runner, work, row)
        except PhilipError as exc:
            outcomes[k] = exc
            continue
        prepared.append(item)
        row = item.rows.stop
    if prepared:
        results = _BatchRound(runner, prepared).run()
        for item, result in zip(prepared, results, strict=True):
            outcomes[works.index(item.work)] = result
    return [o for o in outcomes if o is not None]


def _prepare(runner: RoundRunner, work: RoundWork, row: int) -> _Prepared:
    params, feedback, pipe = work.params, work.feedback, runner.pipe
    shape = (1, int(pipe.unet.config.in_channels),
             params.height // int(pipe.vae_scale_factor), params.width // int(pipe.vae_scale_factor))
    plan = runner.plan(params, feedback, shape)
    prompts, learned, explored = runner.prompts(params, feedback, round(feedback.explore * params.num_images))
    # Explored images show what their prompt asks for: FABRIC would pull them toward the likes.
    conditioned = explored < params.num_images
    group = ReferenceGroup(params.num_images, runner.encode(feedback.liked, params) if conditioned else None,
                           runner.encode(feedback.disliked, params) if conditioned else None,
                           feedback.weights, params.seed, explored)
    return _Prepared(work, plan, prompts, learned, group, slice(row, row + params.num_images))


class _BatchRound:
    """The shared pipeline call and the per-request bookkeeping around it."""

    def __init__(self, runner: RoundRunner, items: list[_Prepared]) -> None:
        self.runner = runner
        self.items = items
        self.capture = UNetCapture()
        first = items[0].work.params
        self.params = first

    def on_step_end(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step = i + 1
        x0 = None
        for item in self.items:
            if not item.live:
                continue
            item.steps_done = step
            work = item.work
            if work.on_step is not None:
                work.on_step(step, self.params.steps)
            every = work.preview_every
            wants = every > 0 and (step % every == 0 or step == self.params.steps)
            if wants and work.on_preview is not None and self.runner.previews is not None and \
                    self.capture.latest is not None:
                x0 = x0 if x0 is not None else x0_estimate(pipe, self.capture)
                work.on_preview(step, self.runner.previews.encode_linear(x0[item.rows]))
            if work.cancel.is_set():  # dropped from here on: reported as cancelled after this step
                item.live = False
        if not any(item.live for item in self.items):
            pipe._interrupt = True  # diffusers skips the remaining steps without calling the UNet
        return callback_kwargs

    def run(self) -> list[FeedbackRound | PhilipError]:
        from services.refiner.rounds import FeedbackRound, RoundCompute, RoundImage

        runner, pipe, params = self.runner, self.runner.pipe, self.params
        items = self.items
        noise = torch.cat([n for item in items for _, n, _ in item.plan]).to(device=pipe.device, dtype=pipe.unet.dtype)
        single = len(items) == 1
        g = items[0].group
        fabric: dict[str, Any] = (
            {"liked": g.liked, "disliked": g.disliked, "weights": g.weights, "seed": g.seed, "exempt": g.exempt}
            if single else {"groups": [item.group for item in items]})
        for item in items:
            if item.work.on_start is not None:
                item.work.on_start()
        hook = pipe.unet.register_forward_hook(self.capture, with_kwargs=True)  # the main pass runs last each step
        base_scheduler = pipe.scheduler
        pipe.scheduler = make_scheduler(pipe, params.scheduler)
        try:
            with FabricConditioner(pipe, empty_prompt_embeds=runner.empty_prompt_embeds(), **fabric) as fab, \
                    torch.inference_mode():
                latents = pipe(
                    prompt=[p for item in items for p in item.prompts],
                    negative_prompt=[item.work.params.negative_prompt for item in items
                                     for _ in range(item.work.params.num_images)],
                    width=params.width, height=params.height, num_inference_steps=params.steps,
                    guidance_scale=params.guidance,
                    latents=noise,  # unscaled: prepare_latents multiplies by init_noise_sigma itself
                    generator=[gen for item in items for _, _, gen in item.plan],  # scheduler noise (ancestral)
                    output_type="latent", callback_on_step_end=self.on_step_end,
                ).images
                cfg = 2 if pipe.do_classifier_free_guidance else 1
            for item in items:  # a cancel that came during the last step still wins
                item.live = item.live and not item.work.cancel.is_set()
            live = [item for item in items if item.live]
            decoded = decode_latents(pipe, torch.cat([latents[item.rows] for item in live])) if live else []
        finally:
            pipe.scheduler = base_scheduler
            hook.remove()
        out: list[FeedbackRound | PhilipError] = []
        offset = 0
        for item, group in zip(items, fab.groups, strict=True):
            n = item.work.params.num_images
            if not item.live:
                out.append(Cancelled(f"refinement round cancelled after step {item.steps_done} of {params.steps}"))
                continue
            pictures, offset = decoded[offset:offset + n], offset + n
            parents = runner.parents(item.work.params, item.work.feedback)
            images = tuple(RoundImage(image=image, index=i, origin=origin, steered_from=parent, prompt=prompt)
                           for i, (image, (origin, _, _), parent, prompt) in enumerate(
                               zip(pictures, item.plan, parents, item.prompts, strict=True)))
            compute = RoundCompute(steps=fab.main_calls, main_image_evals=fab.main_calls * n * cfg,
                                   reference_image_evals=group.reference_evals)
            out.append(FeedbackRound(images=images, compute=compute, learned=tuple(item.learned)))
        return out
