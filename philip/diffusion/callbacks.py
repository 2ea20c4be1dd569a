"""Step callbacks of a :class:`~philip.diffusion.run.DenoisingRun`, in diffusers' ``callback_on_step_end`` style.

Each is ``PipelineCallback``-shaped (``tensor_inputs`` and ``__call__(pipe, step_index, timestep,
callback_kwargs) -> callback_kwargs``) and bound to its run; :class:`StepCallbacks` chains them as diffusers'
``MultiPipelineCallbacks`` does, so a service picks what it needs and the order it wants::

    run([DropCancelled(run), ReportProgress(run), RenderPreviews(run)], prompt=prompts, ...)

They ask the pipeline for no tensors and never change the latents: what they need (the x0 estimate) comes from
the run's UNet capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from diffusers.callbacks import MultiPipelineCallbacks

from philip.previews import x0_estimate

if TYPE_CHECKING:
    from philip.diffusion.run import DenoisingRun


class StepCallback(Protocol):
    """What diffusers calls after each denoising step (a ``PipelineCallback`` without the config machinery)."""

    tensor_inputs: ClassVar[list[str]]

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        ...


class RunCallback:
    """A step callback bound to one run; subclasses act in :meth:`on_step` (``step`` counts from 1)."""

    tensor_inputs: ClassVar[list[str]] = []

    def __init__(self, run: DenoisingRun[Any]) -> None:
        self.run = run

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self.on_step(pipe, step_index + 1)
        return callback_kwargs

    def on_step(self, pipe: Any, step: int) -> None:
        raise NotImplementedError


class DropCancelled(RunCallback):
    """Drops the members whose request was cancelled; once none is left, the remaining steps are skipped."""

    def on_step(self, pipe: Any, step: int) -> None:
        self.run.drop_cancelled()
        if not self.run.live:
            pipe._interrupt = True  # diffusers skips the remaining steps without calling the UNet


class ReportProgress(RunCallback):
    """Tells every live member the step is done."""

    def on_step(self, pipe: Any, step: int) -> None:
        for member in self.run.live:
            member.progress(step, self.run.steps)


class RenderPreviews(RunCallback):
    """Gives each live member that wants a preview now its rows of the x0 estimate, computed once for all."""

    def on_step(self, pipe: Any, step: int) -> None:
        wanting = [member for member in self.run.live if member.wants_preview(step, self.run.steps)]
        if not wanting:
            return
        x0 = x0_estimate(pipe, self.run.capture)
        for member in wanting:
            member.preview(step, x0[self.run.rows[member]])


class StepCallbacks(MultiPipelineCallbacks):  # type: ignore[misc]  # diffusers is untyped here
    """diffusers' callback chain (the pipeline reads its ``tensor_inputs``), counting the run's steps first."""

    def __init__(self, run: DenoisingRun[Any], callbacks: Sequence[StepCallback]) -> None:
        super().__init__(list(callbacks))
        self.run = run

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self.run.step = step_index + 1
        result: dict[str, Any] = super().__call__(pipe, step_index, timestep, callback_kwargs)
        return result
