"""Model families: which diffusers pipeline a model folder is, and what a family serves by default.

A folder's ``model_index.json`` names its pipeline class (``_class_name``); that, not the folder's name, picks
the family. SD-1.x/2.x, SDXL, SD3 and Flux are served; any other class is refused at start-up with a message
naming it and the served ones, so a wrong folder fails when the process starts, never on a request. SD3 and Flux
are flow-matching transformers (joint attention, no UNet ``attn1``): their feedback is seed steering and prompt
exploration without FABRIC, and Flux, guidance-distilled, has no unconditional branch for dislikes to act in.

Generation defaults (the steps, guidance, scheduler, timestep spacing and native size a request gets when it
leaves them unset, and the step range and size cap it may ask for) come from the folder's
``philip_defaults.json`` ``generation`` table laid over a built-in row of :data:`FAMILY_DEFAULTS`: the family's,
or its few-step variant's. Few-step SDXL distillations (SDXL-Turbo: 1-4 steps, guidance 0, trailing spacing, 512
px; SDXL-Lightning: its own step count, Euler trailing) share SDXL's pipeline class: :mod:`philip.models.variants`
recognises them (the folder's ``variant``, the checkpoint files' names, the folder's name).

Torch-free: request validation and servicers import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from philip.models.variants import Variant

DEFAULTS_FILE = "philip_defaults.json"  # its `generation` table; the refiner reads its feedback weights
DTYPES = ("fp16", "bf16", "fp32")  # PHILIP_DTYPE; "" = fp16 on a GPU, fp32 on the CPU
# Each field's accepted types (JSON may say 5 for 5.0; a bool is no number) and how errors name them.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "steps": ((int,), "an integer"), "guidance": ((int, float), "a number"), "scheduler": ((str,), "a string"),
    "native_size": ((int,), "an integer"), "timestep_spacing": ((str,), "a string"), "max_size": ((int,), "an integer"),
    "min_steps": ((int,), "an integer"), "max_steps": ((int,), "an integer")}
TIMESTEP_SPACINGS = ("", "leading", "trailing", "linspace")  # "" = the scheduler config's own
MAX_SIDE = 2048  # no served model is asked for more than this per side


class ModelLoadError(RuntimeError):
    """A model folder is missing, unreadable, or of a family this build does not serve."""


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """What a request that leaves a field unset gets, and the ranges a request may ask for: ``native_size`` 0 =
    the folder's UNet config decides; ``timestep_spacing`` "" = the scheduler config's; ``max_size`` caps each
    side (1024 for SD-1.x, as it always was); ``min_steps``-``max_steps`` bound a request's steps (Turbo: 1-4)."""

    steps: int = 8
    guidance: float = 5.0
    scheduler: str = "dpm++"
    native_size: int = 0
    timestep_spacing: str = ""
    max_size: int = 1024
    min_steps: int = 1
    max_steps: int = 100

    def __post_init__(self) -> None:
        for name, (kinds, what) in _KINDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"{name} must be {what}, got {value!r}")
        object.__setattr__(self, "guidance", float(self.guidance))
        if not 1 <= self.min_steps <= self.steps <= self.max_steps <= 100:
            raise ValueError(f"steps must be in 1-100 and min_steps <= steps <= max_steps, got {self.steps} "
                             f"(range {self.min_steps}-{self.max_steps})")
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= 30.0):
            raise ValueError(f"guidance must be in 0-30, got {self.guidance}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of leading, trailing, linspace or empty (the scheduler's "
                             f"own), got {self.timestep_spacing!r}")
        if self.max_size % 8 or not 64 <= self.max_size <= MAX_SIDE:
            raise ValueError(f"max_size must be a multiple of 8 in 64-{MAX_SIDE}, got {self.max_size}")
        if self.native_size and (self.native_size % 8 or not 8 <= self.native_size <= self.max_size):
            raise ValueError(f"native_size must be a multiple of 8 in 8-{self.max_size} (max_size; 0 = the UNet's), "
                             f"got {self.native_size}")


@dataclass(frozen=True, slots=True)
class Family:
    """One model family: its name, the diffusers pipeline class that loads it, and whether it is served."""

    name: str  # "sd", "sdxl", "sd3", "flux"
    label: str  # for people: logs and errors
    pipeline_class: str
    supported: bool = True
    # What feedback can act through (GetModelInfo reports it): FABRIC needs the UNet's self-attention (attn1);
    # dislikes act through the unconditional branch, which guidance-distilled models (Flux) do not have.
    fabric: bool = True
    cfg: bool = True
    flow_matching: bool = False  # a FlowMatch scheduler: x0 = x_t - sigma * v, no alphas_cumprod


SD = Family("sd", "SD-1.x/2.x", "StableDiffusionPipeline")
SDXL = Family("sdxl", "SDXL", "StableDiffusionXLPipeline")
SD3 = Family("sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline", fabric=False, flow_matching=True)
FLUX = Family("flux", "Flux", "FluxPipeline", fabric=False, cfg=False, flow_matching=True)
FAMILIES: dict[str, Family] = {f.pipeline_class: f for f in (SD, SDXL, SD3, FLUX)}

# Built-in defaults per family, and per few-step variant as "<family>-<variant>" (philip/models/variants.py picks
# it). SD's row is what every SD-1.x folder (philip-tiny) has always had, its native size the UNet's; SDXL base is
# trained at 1024 px and made for CFG around 5. Turbo: 1-4 steps, guidance 0 (no CFG pass: half a step's work),
# trailing spacing so the first step starts at pure noise, trained at 512 px (768 caps it: far above its training
# size it repeats objects); 4 steps by default rather than 1, so previews and FABRIC's per-step schedule have
# steps to act on (GetModelInfo reports it; a client asks for 1 for the fastest loop). Lightning: its file's step
# count (4 unless the name says), Euler with trailing spacing, guidance 0, 1024 px.
_TURBO = GenerationDefaults(steps=4, guidance=0.0, scheduler="euler_a", timestep_spacing="trailing", max_size=768,
                            max_steps=4)
FAMILY_DEFAULTS: dict[str, GenerationDefaults] = {
    "sd": GenerationDefaults(),
    "sdxl": GenerationDefaults(guidance=5.0, native_size=1024),
    "sd-turbo": _TURBO,  # SD-Turbo: its UNet's 512 px
    "sdxl-turbo": replace(_TURBO, native_size=512),
    "sdxl-lightning": GenerationDefaults(steps=4, guidance=0.0, scheduler="euler", timestep_spacing="trailing",
                                         native_size=1024),
    # Flow matching: their own Euler scheduler (the model's shift). SD3: about 28 steps with CFG around 7. Flux
    # dev embeds a guidance value (3.5, no CFG pass); schnell (no guidance embedding) is distilled to 1-4 steps.
    "sd3": GenerationDefaults(steps=28, guidance=7.0, scheduler="flow_euler", native_size=1024),
    "flux": GenerationDefaults(steps=28, guidance=3.5, scheduler="flow_euler", native_size=1024),
    "flux-schnell": GenerationDefaults(steps=4, guidance=0.0, scheduler="flow_euler", native_size=1024),
}


def detect_family(model_dir: str | Path) -> Family:
    """The served family of the folder's ``model_index.json``; :class:`ModelLoadError` naming what is wrong."""
    path = Path(model_dir) / "model_index.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{model_dir} is not a diffusers model folder (no model_index.json); "
            "train philip-tiny with `philip train-tiny` or point PHILIP_MODEL_DIR at a checkpoint folder")
    try:
        class_name = json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: not a diffusers model index ({exc})") from None
    family = FAMILIES.get(class_name) if isinstance(class_name, str) else None
    if family is None:
        served = ", ".join(f"{f.pipeline_class} ({f.label})" for f in FAMILIES.values() if f.supported)
        raise ModelLoadError(f"{path}: unknown pipeline class {class_name!r}; PHiLIP serves {served}")
    if not family.supported:  # a family recognised by name but switched off in this build
        served = ", ".join(f.label for f in FAMILIES.values() if f.supported)
        raise ModelLoadError(f"{model_dir} is a {family.label} model ({family.pipeline_class}); {family.label} is "
                             f"not supported by this build: serve one of {served}")
    return family


def family_of(pipe: Any) -> Family:
    """The family of a loaded pipeline (by its class: subclasses and test doubles count as SD-1.x)."""
    return FAMILIES.get(type(pipe).__name__, SD)


def denoiser_model(pipe: Any) -> Any:
    """The network each step runs: SD-1.x/SDXL's ``unet``, SD3/Flux's ``transformer``."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def generation_defaults(model_dir: str | Path, family: Family,
                        variant: Variant | None = None) -> tuple[GenerationDefaults, str]:
    """The folder's ``generation`` table laid over the built-in row of the family (or of its few-step
    ``variant``, when it has one), and where it came from."""
    builtin, label = _builtin_row(family, variant or Variant())
    if family is FLUX and not _guidance_embedded(model_dir):  # schnell has no guidance input: few steps, no guidance
        builtin, label = FAMILY_DEFAULTS["flux-schnell"], "Flux schnell: no guidance embedding"
    path = Path(model_dir) / DEFAULTS_FILE
    table = _read_table(path) if path.is_file() else None
    if table is None:
        return builtin, f"built-in ({label})"
    unknown = set(table) - set(GenerationDefaults.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown generation defaults {sorted(unknown)}; "
                         f"known: {', '.join(GenerationDefaults.__dataclass_fields__)}")
    try:
        return replace(builtin, **table), str(path)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad generation defaults ({exc})") from None


def _builtin_row(family: Family, variant: Variant) -> tuple[GenerationDefaults, str]:
    row = FAMILY_DEFAULTS.get(f"{family.name}-{variant.name}") if variant.name else None
    if row is None:  # the base model, or a variant this family has no row for (SD-1.x "lightning")
        return FAMILY_DEFAULTS.get(family.name, GenerationDefaults()), family.label
    if variant.steps and row.min_steps <= variant.steps <= row.max_steps:
        row = replace(row, steps=variant.steps)
    return row, variant.label(family.label)


def _guidance_embedded(model_dir: str | Path) -> bool:
    """Whether a Flux transformer embeds a guidance value (dev-like) rather than none (schnell-like)."""
    try:
        config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return True  # no readable config: the loader will say so; the dev-like row is the safer default
    return bool(config.get("guidance_embeds", False)) if isinstance(config, dict) else True


def _read_table(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read model defaults ({exc})") from None
    table = data.get("generation") if isinstance(data, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ValueError(f"{path}: `generation` must be a table of defaults")
    return table
