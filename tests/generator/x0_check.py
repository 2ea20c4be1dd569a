"""The check both families' engine tests make of the previews' clean-image estimate."""

from __future__ import annotations

import torch

from philip.models.latents import grid_latents
from philip.models.pipelines import make_scheduler
from services.generator.engine import DiffusionEngine


def assert_last_x0_is_the_final_latent(engine: DiffusionEngine, scheduler: str, size: int = 0) -> None:
    """Every scheduler ends at sigma 0, where the sample *is* the model's x0 estimate: a check of the hook, the
    CFG combination and the input scaling (and any added conditions) against the scheduler's own maths. ``size``
    (px, 0 = the pipeline's default) is Flux's way to a small image; its packed output is compared unpacked."""
    pipe = engine.pipe
    base = pipe.scheduler
    pipe.scheduler = make_scheduler(pipe, scheduler)
    try:
        sides = {"height": size, "width": size} if size else {}
        latents = pipe(["a red circle", "a blue star"], num_inference_steps=4, guidance_scale=4.0,
                       generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent",
                       **sides).images
        latents = grid_latents(pipe, latents, size, size)
        estimate = engine.x0_estimate()
    finally:
        pipe.scheduler = base
    assert torch.allclose(estimate, latents, atol=1e-4)
