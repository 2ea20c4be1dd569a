"""The diffusion engine: one pipeline, one merged batch at a time, on its device's worker thread.

A batch is one :class:`~philip.diffusion.run.DenoisingRun`, each job a member of it with its own rows:
* the run's step callbacks honour cancellation first (a cancelled job is dropped at the next step; when every
  job of the batch is cancelled the remaining steps are skipped), then report progress and render previews
  from the x0 estimate of the UNet capture (see ``x0_estimate``), for any scheduler;
* only the jobs still wanted are decoded, and a cancel that arrives during the decode still wins.
Each image has its own CPU generator seeded with its seed, so an image depends only on
(prompts, batch parameters, seed), whether its job ran alone or merged with others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from philip.diffusion.callbacks import DropCancelled, RenderPreviews, ReportProgress
from philip.diffusion.executors import post_to_loop
from philip.diffusion.run import Denoiser
from philip.images import png_bytes
from philip.logs import bind_ids, get_logger
from philip.models.adapters import AdapterSwitch, activate_adapters
from philip.models.conditioning import prompt_kwargs
from philip.models.families import GenerationDefaults, family_of
from philip.models.load_options import LoadOptions
from philip.models.model_info import ModelInfo, describe_model
from philip.models.pipelines import (
    denoiser_model,
    dtype_name,
    load_pipeline,
    native_size,
    schedulers_for,
    served_defaults,
)
from philip.models.variants import Variant, detect_variant
from philip.previews import PreviewEncoder
from services.generator.batching import WorkItem
from services.generator.events import Cancelled, GeneratedImage, JobEvent, Preview, Progress, Result

log = get_logger("services.generator.engine")


class DiffusionEngine:
    """Owns one diffusion pipeline (any served family) and runs merged batches (a ``BatchRunner``)."""

    def __init__(self, pipe: Any, previews: PreviewEncoder, adapters: AdapterSwitch | None = None,
                 defaults: GenerationDefaults | None = None, variant: Variant | None = None,
                 name: str = "") -> None:
        self.pipe = pipe
        self.previews = previews
        self.adapters = adapters
        self.defaults = defaults or GenerationDefaults()  # what a request leaving a field unset gets
        self.variant = variant or Variant()  # a few-step distillation (Turbo, Lightning), for GetModelInfo's label
        self.name = name  # the model folder's, for GetModelInfo
        self.denoiser = Denoiser(pipe)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", *, threads: int | None = None,
             adapters_dir: str | Path | None = None, adapter_cache: int = 8, dtype: str = "",
             options: LoadOptions | None = None) -> DiffusionEngine:
        """Load the model folder (``dtype``: a ``PHILIP_DTYPE`` name, "" = the device's default; ``options``: a
        UNet and a base LoRA over it), its generation defaults and its preview projection (fitted on first use).
        Blocking."""
        if threads:
            torch.set_num_threads(threads)
        options = options or LoadOptions()
        pipe = load_pipeline(model_dir, device, dtype, options)
        adapters = AdapterSwitch(pipe, adapters_dir, adapter_cache) if adapters_dir is not None else None
        return cls(pipe, PreviewEncoder.for_pipeline(pipe, model_dir), adapters,
                   served_defaults(model_dir, pipe, options),
                   detect_variant(model_dir, options.unet_path, options.base_lora), Path(model_dir).resolve().name)

    def model_info(self) -> ModelInfo:
        """What GetModelInfo answers: this engine's family, variant, dtype, defaults and schedulers."""
        dtype = dtype_name(denoiser_model(self.pipe).dtype)  # the UNet's, or SD3/Flux's transformer's
        return describe_model(family_of(self.pipe), self.variant, dtype, self.defaults, self.schedulers, self.name)

    @property
    def native_size(self) -> int:
        """Default long side in pixels: the model's defaults, else the UNet's sample size times the VAE's
        downscale."""
        return self.defaults.native_size or native_size(self.pipe)

    @property
    def schedulers(self) -> tuple[str, ...]:
        """The scheduler names this model accepts (flow-matching models: only their flow scheduler)."""
        return schedulers_for(self.pipe)

    async def run(self, batch: Sequence[WorkItem]) -> None:
        await self.denoiser.worker.run(self._run_batch, list(batch), asyncio.get_running_loop())

    def close(self) -> None:
        self.denoiser.close()

    def x0_estimate(self) -> torch.Tensor:
        """x0 of the latest UNet call, with classifier-free guidance applied as the pipeline does."""
        return self.denoiser.x0_estimate()

    def _run_batch(self, batch: list[WorkItem], loop: asyncio.AbstractEventLoop) -> None:
        """One pipeline call for the batch, on the device's thread; every event goes back to the loop."""
        key = batch[0].key
        activate_adapters(self.adapters, key.adapter_ids)  # a batch holds one adapter set (batching.py)
        run = self.denoiser.start([_JobRows(item, loop, self) for item in batch], scheduler=key.scheduler,
                                  steps=key.steps)
        latents = run(
            [DropCancelled(run), ReportProgress(run), RenderPreviews(run)],
            hooks=[bind_ids(job_id=",".join(item.job_id for item in batch))],
            **prompt_kwargs(self.pipe, [item.request.prompt for item in batch for _ in range(item.num_images)],
                            [item.request.negative_prompt for item in batch for _ in range(item.num_images)]),
            width=key.width,
            height=key.height,
            guidance_scale=key.guidance,
            generator=[torch.Generator("cpu").manual_seed(seed) for item in batch for seed in item.request.image_seeds],
        )
        run.drop_cancelled()
        decoded = run.decode_live(latents)
        run.drop_cancelled()  # a cancel that arrived during the decode still wins
        for job, images in decoded:
            if job in run.live:
                job.send(Result(job.generated(images)))


@dataclass(eq=False)
class _JobRows:
    """A job's rows in a run (a ``BatchMember``): its events go to the job's ``send`` on the event loop."""

    item: WorkItem
    loop: asyncio.AbstractEventLoop
    engine: DiffusionEngine

    @property
    def images(self) -> int:
        return self.item.num_images

    def send(self, event: JobEvent) -> None:
        post_to_loop(self.loop, self.item.send, event)

    def check_cancelled(self, after_step: int) -> bool:
        reason = self.item.cancel_reason  # read once: the loop may change it meanwhile
        if reason is None:
            return False
        self.send(Cancelled(reason))
        return True

    def progress(self, step: int, total: int) -> None:
        self.send(Progress(step, total))

    def wants_preview(self, step: int, total: int) -> bool:
        return self.item.wants_preview(step, total)

    def preview(self, step: int, x0: torch.Tensor) -> None:
        if self.item.request.preview_mode == "vae":
            images = self.engine.previews.encode_vae(self.engine.pipe, x0)
        else:  # the tiny decoder's output-size images when the model folder has one, else the linear map
            images = self.engine.previews.encode_fast(x0)
        self.send(Preview(step, self.generated(images)))

    def generated(self, pil_images: list[Any]) -> tuple[GeneratedImage, ...]:
        seeds = self.item.request.image_seeds
        return tuple(
            GeneratedImage(png=png_bytes(image), width=image.width, height=image.height, seed=seeds[n], index=n)
            for n, image in enumerate(pil_images)
        )
