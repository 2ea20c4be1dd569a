"""One denoising run: a single ``output_type="latent"`` pipeline call for a batch whose rows may belong to
different requests (the generator's merged jobs, the refiner's rounds of several sessions).

A service wraps each request as a :class:`BatchMember` and picks the step callbacks
(:mod:`philip.diffusion.callbacks`) and hooks (FABRIC's conditioner, log context) its call needs::

    run = denoiser.start(members, scheduler="dpm++", steps=20)        # on the device's thread
    latents = run([DropCancelled(run), ReportProgress(run), RenderPreviews(run)], prompt=prompts, ...)
    run.drop_cancelled()
    for member, images in run.decode_live(latents): ...

Each member keeps its own generators (seeds), so its images do not depend on who else rode in the batch. A
cancelled member is dropped at the next step: its rows finish with the batch but are neither reported nor decoded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

import torch
from PIL import Image

from philip.diffusion.callbacks import StepCallback, StepCallbacks
from philip.diffusion.executors import DeviceWorker
from philip.diffusion.schedulers import swapped_scheduler
from philip.models.latents import grid_latents, pipeline_latents
from philip.models.pipelines import denoiser_model
from philip.previews import UNetCapture, decode_latents, x0_estimate


class BatchMember(Protocol):
    """One request's images in a shared call, as the service owning the request sees them (device thread)."""

    @property
    def images(self) -> int:
        """Rows it takes in the batch (classifier-free guidance doubles them all alike)."""
        ...

    def check_cancelled(self, after_step: int) -> bool:
        """Whether its request was cancelled; if so it reports that itself, and the run drops it."""
        ...

    def progress(self, step: int, total: int) -> None: ...

    def wants_preview(self, step: int, total: int) -> bool: ...

    def preview(self, step: int, x0: torch.Tensor) -> None:
        """``x0``: its rows of the clean-latent estimate after ``step``."""
        ...


M = TypeVar("M", bound=BatchMember)


class DenoisingRun(Generic[M]):
    """The members' rows (in order) in one pipeline call, which of them are still wanted, and the steps done."""

    def __init__(self, pipe: Any, capture: UNetCapture, members: Sequence[M], *, scheduler: str, steps: int) -> None:
        self.pipe = pipe
        self.capture = capture
        self.scheduler = scheduler
        self.steps = steps
        self.rows: dict[M, slice] = {}
        start = 0
        for member in members:
            self.rows[member] = slice(start, start + member.images)
            start += member.images
        self.live: list[M] = list(members)
        self.step = 0  # denoising steps done

    def __call__(self, callbacks: Sequence[StepCallback], *, hooks: Sequence[AbstractContextManager[Any]] = (),
                 **pipe_kwargs: Any) -> torch.Tensor:
        """The pipeline call, inside ``hooks`` and the run's scheduler; returns every row's final latents (the
        dropped members' too) as a latent grid (B x C x h x w, Flux's unpacked). The run sets the steps, the callbacks
        and ``output_type``; the rest is ``pipe_kwargs`` (``latents`` as a grid: packed here for Flux)."""
        if pipe_kwargs.get("latents") is not None:
            pipe_kwargs["latents"] = pipeline_latents(self.pipe, pipe_kwargs["latents"])
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook)
            stack.enter_context(swapped_scheduler(self.pipe, self.scheduler))
            stack.enter_context(torch.inference_mode())
            output = self.pipe(num_inference_steps=self.steps, callback_on_step_end=StepCallbacks(self, callbacks),
                               output_type="latent", **pipe_kwargs)  # we decode only the members still wanted
        latents: torch.Tensor = grid_latents(self.pipe, output.images, pipe_kwargs.get("height", 0),
                                             pipe_kwargs.get("width", 0))
        return latents

    def drop_cancelled(self) -> None:
        """Drop the live members whose request was cancelled (each reports that itself)."""
        self.live = [member for member in self.live if not member.check_cancelled(self.step)]

    def decode_live(self, latents: torch.Tensor) -> list[tuple[M, list[Image.Image]]]:
        """Full VAE decode of the live members' rows only, in one decoder batch, split per member."""
        if not self.live:
            return []
        pictures = decode_latents(self.pipe, torch.cat([latents[self.rows[member]] for member in self.live]))
        decoded, offset = [], 0
        for member in self.live:
            decoded.append((member, pictures[offset : offset + member.images]))
            offset += member.images
        return decoded


class Denoiser:
    """A pipeline served from its device's worker thread, its UNet's latest call kept for x0 previews.

    The generator's engine and the refiner's round runner each own one. Calls on one pipeline never overlap (one
    thread per device), so one capture serves every run; it stays hooked so ``x0_estimate`` also works after a
    plain pipeline call.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.worker = DeviceWorker(pipe.device)
        self.capture = UNetCapture()
        self._hook: Any = None
        self._hook_unet()

    def start(self, members: Sequence[M], *, scheduler: str, steps: int) -> DenoisingRun[M]:
        """A run of ``members`` in batch order, to call on the device's thread (``worker.run``)."""
        self._hook_unet()  # a closed owner may still be asked to run
        return DenoisingRun(self.pipe, self.capture, members, scheduler=scheduler, steps=steps)

    def x0_estimate(self) -> torch.Tensor:
        """x0 of the latest UNet call, with classifier-free guidance applied as the pipeline does."""
        return x0_estimate(self.pipe, self.capture)

    def close(self) -> None:
        """Wait for this pipeline's work on the device's thread, then unhook the capture. Blocking."""
        self.worker.close()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _hook_unet(self) -> None:
        if self._hook is None:  # the UNet, or SD3/Flux's transformer
            self._hook = denoiser_model(self.pipe).register_forward_hook(self.capture, with_kwargs=True)
