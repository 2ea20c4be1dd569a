"""The diffusion engine: one pipeline, one merged batch at a time, on a dedicated worker thread.

It plugs into diffusers' extension points instead of copying the denoising loop:
* ``callback_on_step_end`` reports progress, renders previews and honours cancellation
  (a cancelled job is dropped at the next step; when every job of the batch is cancelled,
  ``pipe._interrupt`` skips the remaining steps);
* a UNet forward hook keeps the latest (scaled model input, timestep, output), from which the
  x0 estimate is computed for any scheduler (see ``x0_estimate``).
Each image has its own CPU generator seeded with its seed, so an image depends only on
(prompts, batch parameters, seed), whether its job ran alone or merged with others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from philip.images import png_bytes
from philip.logs import bind_ids, get_logger
from philip.models.adapters import AdapterSwitch, activate_adapters
from philip.models.pipelines import SCHEDULERS, load_pipeline, make_scheduler, native_size
from philip.previews import PreviewEncoder, UNetCapture, decode_latents, x0_estimate
from philip.priority import DEVICE
from services.generator.batching import WorkItem
from services.generator.events import Cancelled, GeneratedImage, JobEvent, Preview, Progress, Result

log = get_logger("services.generator.engine")


class DiffusionEngine:
    """Owns one Stable Diffusion pipeline and runs merged batches (a ``BatchRunner``)."""

    def __init__(self, pipe: Any, previews: PreviewEncoder, adapters: AdapterSwitch | None = None) -> None:
        self.pipe = pipe
        self.previews = previews
        self.adapters = adapters
        # One thread: the pipeline (and its scheduler swap) is not safe to share, and torch work
        # must never run on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusion")
        self._capture = UNetCapture()
        self._hook = pipe.unet.register_forward_hook(self._capture, with_kwargs=True)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", *, threads: int | None = None,
             adapters_dir: str | Path | None = None, adapter_cache: int = 8) -> DiffusionEngine:
        """Load the model folder and its preview projection (fitted on first use). Blocking."""
        if threads:
            torch.set_num_threads(threads)
        pipe = load_pipeline(model_dir, device)
        adapters = AdapterSwitch(pipe, adapters_dir, adapter_cache) if adapters_dir is not None else None
        return cls(pipe, PreviewEncoder.for_pipeline(pipe, model_dir), adapters)

    @property
    def native_size(self) -> int:
        """Default long side in pixels: the UNet's sample size times the VAE's downscale."""
        return native_size(self.pipe)

    @property
    def schedulers(self) -> tuple[str, ...]:
        return tuple(SCHEDULERS)

    async def run(self, batch: Sequence[WorkItem]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._run_batch, list(batch), loop)

    def close(self) -> None:
        self._hook.remove()
        self._executor.shutdown(wait=True)

    def x0_estimate(self) -> torch.Tensor:
        """x0 of the latest UNet call, with classifier-free guidance applied as the pipeline does."""
        return x0_estimate(self.pipe, self._capture)

    # ---- worker thread ---------------------------------------------------------------------------

    def _run_batch(self, batch: list[WorkItem], loop: asyncio.AbstractEventLoop) -> None:
        with DEVICE.interactive():  # training in this process waits
            self._run_batch_now(batch, loop)

    def _run_batch_now(self, batch: list[WorkItem], loop: asyncio.AbstractEventLoop) -> None:
        key = batch[0].key
        activate_adapters(self.adapters, key.adapter_ids)  # a batch holds one adapter set (batching.py)
        run = _BatchRun(self, batch, loop)
        pipe = self.pipe
        base_scheduler = pipe.scheduler
        pipe.scheduler = make_scheduler(pipe, key.scheduler)
        try:
            with bind_ids(job_id=",".join(item.job_id for item in batch)), torch.inference_mode():
                latents = pipe(
                    prompt=[item.request.prompt for item in batch for _ in range(item.num_images)],
                    negative_prompt=[item.request.negative_prompt for item in batch for _ in range(item.num_images)],
                    width=key.width,
                    height=key.height,
                    num_inference_steps=key.steps,
                    guidance_scale=key.guidance,
                    generator=[torch.Generator("cpu").manual_seed(seed) for item in batch
                               for seed in item.request.image_seeds],
                    output_type="latent",  # we decode only the jobs still wanted
                    callback_on_step_end=run.on_step_end,
                ).images
                run.finish(latents)
        finally:
            pipe.scheduler = base_scheduler


class _BatchRun:
    """Per-batch state on the worker thread: which rows belong to which job, who is still live."""

    def __init__(self, engine: DiffusionEngine, batch: list[WorkItem], loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.items = batch
        self.loop = loop
        self.rows: list[slice] = []
        start = 0
        for item in batch:
            self.rows.append(slice(start, start + item.num_images))
            start += item.num_images
        self.live = list(range(len(batch)))
        self.total_steps = batch[0].request.steps

    def send(self, k: int, event: JobEvent) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown: nobody is listening
            self.loop.call_soon_threadsafe(self.items[k].send, event)

    def drop_cancelled(self) -> None:
        for k in list(self.live):
            reason = self.items[k].cancel_reason
            if reason is not None:
                self.live.remove(k)
                self.send(k, Cancelled(reason))

    def on_step_end(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step = i + 1
        self.drop_cancelled()
        if not self.live:
            pipe._interrupt = True  # diffusers skips the remaining steps; output_type="latent" skips decoding
            return callback_kwargs
        for k in self.live:
            self.send(k, Progress(step, self.total_steps))
        wanting = [k for k in self.live if self.items[k].wants_preview(step, self.total_steps)]
        if wanting:
            x0 = self.engine.x0_estimate()
            for k in wanting:
                self.send(k, Preview(step, self._images(k, self._render_preview(x0[self.rows[k]]))))
        return callback_kwargs

    def _render_preview(self, x0: torch.Tensor) -> list[Any]:
        if self.items[0].request.preview_mode == "vae":
            return self.engine.previews.encode_vae(self.engine.pipe, x0)
        return self.engine.previews.encode_linear(x0)

    def _images(self, k: int, pil_images: list[Any]) -> tuple[GeneratedImage, ...]:
        seeds = self.items[k].request.image_seeds
        return tuple(
            GeneratedImage(png=png_bytes(image), width=image.width, height=image.height, seed=seeds[n], index=n)
            for n, image in enumerate(pil_images)
        )

    def finish(self, latents: torch.Tensor) -> None:
        self.drop_cancelled()
        if not self.live:
            return
        wanted = list(self.live)
        decoded = decode_latents(self.engine.pipe, torch.cat([latents[self.rows[k]] for k in wanted]))
        self.drop_cancelled()  # a cancel that arrived during the decode still wins
        offset = 0
        for k in wanted:
            n = self.items[k].num_images
            if k in self.live:
                self.send(k, Result(self._images(k, decoded[offset : offset + n])))
            offset += n
