"""Load any SD-1.x-format diffusers folder (philip-tiny, SD 1.5, SD-Turbo) the same way."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
)

from philip.logs import route_model_library_logs

# Public scheduler names (the proto's `scheduler` field) -> (class, extra config).
SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False}),  # latents are not in [-1, 1]
    "lcm": (LCMScheduler, {}),
}
DEFAULT_SCHEDULER = "dpm++"


class ModelLoadError(RuntimeError):
    """A model folder is missing or not a diffusers Stable Diffusion folder."""


def load_pipeline(
    model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> StableDiffusionPipeline:
    """Load a StableDiffusionPipeline from a local folder, never touching a hub."""
    path = Path(model_dir)
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers model folder (no model_index.json); "
            "train philip-tiny with `philip train-tiny` or point PHILIP_MODEL_DIR at a checkpoint folder"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    route_model_library_logs()  # their loading bars and warnings would break a server's JSON log stream
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def make_scheduler(pipe: StableDiffusionPipeline, name: str) -> Any:
    """A fresh scheduler of the named kind, configured like the model's own (schedule, prediction type)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return cls.from_config(pipe.scheduler.config, **extra)


def native_size(pipe: Any) -> int:
    """The model's default side in pixels: the UNet's sample size times the VAE's downscale."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
