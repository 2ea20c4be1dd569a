"""Load a diffusers folder of a served family (philip-tiny, SD 1.5, SD-Turbo, SDXL) the same way: the pipeline
class its ``model_index.json`` names (:mod:`philip.models.families`), in ``PHILIP_DTYPE``."""

from __future__ import annotations

import dataclasses
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
    StableDiffusionXLPipeline,
)

from philip.logs import get_logger, route_model_library_logs
from philip.models.families import (
    DTYPES,
    SD,
    GenerationDefaults,
    ModelLoadError,
    detect_family,
    family_of,
    generation_defaults,
)
from philip.models.latents import keep_vae_fp32

log = get_logger("philip.models.pipelines")

# Public scheduler names (the proto's `scheduler` field) -> (class, extra config).
SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False}),  # latents are not in [-1, 1]
    "lcm": (LCMScheduler, {}),
}
DEFAULT_SCHEDULER = "dpm++"


PIPELINES: dict[str, Any] = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}  # by family name
_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def torch_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """A ``PHILIP_DTYPE`` name (fp16 | bf16 | fp32; "" or None = fp16 on a GPU, fp32 on the CPU) as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "").strip().lower()
    if not name:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if name not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or empty for the device's default), got {dtype!r}")
    return _TORCH_DTYPES[name]


def load_pipeline(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | str | None = None) -> Any:
    """The folder's pipeline, of the class its family loads with, never touching a hub.

    Raises :class:`ModelLoadError` naming the family for a folder this build does not serve (SD3, Flux, unknown
    classes), before any weight is read. A VAE whose config sets ``force_upcast`` stays in fp32.
    """
    family = detect_family(model_dir)  # first: a wrong folder fails before the libraries load anything
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    route_model_library_logs()  # their loading bars and warnings would break a server's JSON log stream
    resolved = torch_dtype(dtype, device)
    # SD-1.x folders may list a safety checker we never run; SDXL has none, and no watermark on latents.
    extra = {"safety_checker": None, "requires_safety_checker": False} if family is SD else {"add_watermarker": False}
    pipe = PIPELINES[family.name].from_pretrained(str(model_dir), dtype=resolved, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    keep_vae_fp32(pipe)
    log.info("model.loaded", family=family.name, pipeline=family.pipeline_class, dtype=str(resolved).split(".")[-1],
             vae_dtype=str(pipe.vae.dtype).split(".")[-1], device=device)
    return pipe


def make_scheduler(pipe: Any, name: str) -> Any:
    """A fresh scheduler of the named kind, configured like the model's own (schedule, prediction type)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return cls.from_config(pipe.scheduler.config, **extra)


def native_size(pipe: Any) -> int:
    """The model's default side in pixels: the UNet's sample size times the VAE's downscale."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def served_defaults(model_dir: str | Path, pipe: Any) -> GenerationDefaults:
    """The loaded folder's generation defaults (its file's, else its family's), the native size filled in from
    the UNet's config where they leave it to it; logged with where they came from."""
    defaults, source = generation_defaults(model_dir, family_of(pipe))
    config_size = native_size(pipe)
    if defaults.native_size and defaults.native_size != config_size:
        # e.g. an SDXL-Turbo folder (512 px) under SDXL base's row (1024 px): its defaults file should say so
        log.warning("model.native_size_differs", defaults=defaults.native_size, unet_config=config_size)
    served = dataclasses.replace(defaults, native_size=defaults.native_size or config_size)
    log.info("model.defaults", source=source, **dataclasses.asdict(served))
    return served


__all__ = ["DEFAULT_SCHEDULER", "PIPELINES", "SCHEDULERS", "ModelLoadError", "load_pipeline", "make_scheduler",
           "native_size", "served_defaults", "torch_dtype"]
