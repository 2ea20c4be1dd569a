"""Load a diffusers folder of a served family (philip-tiny, SD 1.5, SD-Turbo, SDXL, SD3, Flux) the same way: the
pipeline class its ``model_index.json`` names (:mod:`philip.models.families`), in ``PHILIP_DTYPE``; and the
schedulers each model accepts (flow-matching models only their flow scheduler, the others only theirs)."""

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
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    LCMScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from philip.logs import get_logger, route_model_library_logs
from philip.models.acceleration import accelerate
from philip.models.checkpoints import fuse_base_lora, load_unet
from philip.models.families import (
    DTYPES,
    SD,
    SDXL,
    GenerationDefaults,
    ModelLoadError,
    denoiser_model,
    detect_family,
    family_of,
    generation_defaults,
)
from philip.models.latents import keep_vae_fp32
from philip.models.load_options import LoadOptions
from philip.models.variants import detect_variant

log = get_logger("philip.models.pipelines")

# Public scheduler names (the proto's `scheduler` field) -> (class, extra config).
SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False}),  # latents are not in [-1, 1]
    "lcm": (LCMScheduler, {}),
    # SD3/Flux: Euler on the flow x_t = (1 - sigma) x0 + sigma noise, with the model's own shift (from its config).
    "flow_euler": (FlowMatchEulerDiscreteScheduler, {}),
}
DEFAULT_SCHEDULER = "dpm++"
FLOW_SCHEDULERS = ("flow_euler",)  # the only ones a flow-matching model (SD3, Flux) accepts
NOISE_SCHEDULERS = tuple(name for name in SCHEDULERS if name not in FLOW_SCHEDULERS)  # SD-1.x/2.x, SDXL


PIPELINES: dict[str, Any] = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline,  # by family name
                             "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}
_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as PHILIP_DTYPE names it (fp16 | bf16 | fp32), else torch's own name."""
    names = {value: key for key, value in _TORCH_DTYPES.items()}
    return names.get(dtype, str(dtype).removeprefix("torch."))


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


def load_pipeline(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | str | None = None,
                  options: LoadOptions | None = None) -> Any:
    """The folder's pipeline, of the class its family loads with, never touching a hub.

    Raises :class:`ModelLoadError` naming the family for a folder this build does not serve (unknown classes),
    before any weight is read. A VAE whose config sets ``force_upcast`` stays in fp32. ``options``
    (``LoadOptions.from_settings(settings.models)``): a UNet loaded in place of the folder's and a LoRA fused into
    the base (:mod:`philip.models.checkpoints`), each a :class:`ModelLoadError` naming its setting when it fails.
    """
    options = options or LoadOptions()
    family = detect_family(model_dir)  # first: a wrong folder fails before the libraries load anything
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    route_model_library_logs()  # their loading bars and warnings would break a server's JSON log stream
    resolved = torch_dtype(dtype, device)
    # SD-1.x folders may list a safety checker we never run; SDXL has none, and no watermark on latents.
    extra: dict[str, Any] = ({"safety_checker": None, "requires_safety_checker": False} if family is SD
                             else {"add_watermarker": False} if family is SDXL else {})
    if options.unet_path:  # in place of the folder's: its own UNet is never read
        extra["unet"] = load_unet(options.unet_path, model_dir, resolved)
    pipe = PIPELINES[family.name].from_pretrained(str(model_dir), dtype=resolved, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    if options.base_lora:  # before the move: the fuse runs once, wherever the weights are
        fuse_base_lora(pipe, options.base_lora, options.base_lora_scale)
    pipe = pipe.to(device)
    keep_vae_fp32(pipe)
    accelerate(pipe, options)  # VAE slicing/tiling, channels_last on a GPU, PHILIP_COMPILE; logs the attention backend
    log.info("model.loaded", family=family.name, pipeline=family.pipeline_class, dtype=dtype_name(resolved),
             vae_dtype=dtype_name(pipe.vae.dtype), device=device, unet_path=options.unet_path or None,
             base_lora=options.base_lora or None,
             base_lora_scale=options.base_lora_scale if options.base_lora else None)
    return pipe


def make_scheduler(pipe: Any, name: str, timestep_spacing: str = "") -> Any:
    """A fresh scheduler of the named kind, configured like the model's own (schedule, prediction type, and the
    timestep spacing :func:`served_defaults` set on it), ``timestep_spacing`` overriding it when given."""
    accepted = schedulers_for(pipe)
    if name not in accepted:  # an epsilon scheduler on a flow model (or the reverse) would denoise garbage silently
        why = "unknown scheduler" if name not in SCHEDULERS else f"a {family_of(pipe).label} model cannot use scheduler"
        raise ValueError(f"{why} {name!r}; choose one of {', '.join(accepted)}")
    cls, extra = SCHEDULERS[name]
    spacing = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    return cls.from_config(pipe.scheduler.config, **extra, **spacing)


def schedulers_for(pipe: Any) -> tuple[str, ...]:
    """The public scheduler names this model accepts (what request validation offers): flow-matching families
    (SD3, Flux) only theirs, the others every noise-prediction one."""
    return FLOW_SCHEDULERS if family_of(pipe).flow_matching else NOISE_SCHEDULERS


def native_size(pipe: Any) -> int:
    """The model's default side in pixels: the UNet's (or SD3 transformer's) sample size times the VAE's downscale;
    Flux's transformer has none, so its VAE's training size (1024 for Flux's own VAE)."""
    config = denoiser_model(pipe).config
    if getattr(config, "sample_size", None):
        return int(config.sample_size) * int(pipe.vae_scale_factor)
    return int(pipe.vae.config.sample_size)


def served_defaults(model_dir: str | Path, pipe: Any, options: LoadOptions | None = None) -> GenerationDefaults:
    """The loaded folder's generation defaults (its file's, else its family's or its few-step variant's: see
    :mod:`philip.models.variants`), the native size filled in from the UNet's config where they leave it to it;
    logged with where they came from and which rule chose the variant. Their timestep spacing goes into the
    pipeline's scheduler config, so every scheduler :func:`make_scheduler` makes from it spaces steps that way."""
    options = options or LoadOptions()
    variant = detect_variant(model_dir, options.unet_path, options.base_lora)
    defaults, source = generation_defaults(model_dir, family_of(pipe), variant)
    if defaults.timestep_spacing:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                          timestep_spacing=defaults.timestep_spacing)
    config_size = native_size(pipe)
    if defaults.native_size and defaults.native_size != config_size:
        # e.g. an SDXL-Turbo folder (512 px) under SDXL base's row (1024 px): its defaults file should say so
        log.warning("model.native_size_differs", defaults=defaults.native_size, unet_config=config_size)
    served = dataclasses.replace(defaults, native_size=defaults.native_size or config_size)
    log.info("model.defaults", source=source, variant=variant.name or "base", variant_rule=variant.rule,
             **dataclasses.asdict(served))
    return served


__all__ = ["DEFAULT_SCHEDULER", "PIPELINES", "SCHEDULERS", "ModelLoadError", "denoiser_model", "dtype_name",
           "load_pipeline", "make_scheduler", "native_size", "schedulers_for", "served_defaults", "torch_dtype"]
