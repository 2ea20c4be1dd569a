"""Model families: which diffusers pipeline a model folder is, and what a family serves by default.

A folder's ``model_index.json`` names its pipeline class (``_class_name``); that, not the folder's name, picks
the family. SD-1.x/2.x and SDXL are served; SD3 and Flux are recognised and refused at start-up with a message
naming them (their transformers, flow-matching schedulers and T5 encoders are not wired yet, issue 21); any
other class is refused the same way, so a wrong folder fails when the process starts, never on a request.

Generation defaults (the steps, guidance, scheduler and native size a request gets when it leaves them unset)
come from the folder's ``philip_defaults.json`` ``generation`` table, else from the family's built-in row of
:data:`FAMILY_DEFAULTS`. Few-step SDXL distillations (SDXL-Turbo: 1-4 steps, guidance 0, trailing spacing, 512
px; SDXL-Lightning: its own step count, Euler trailing) share SDXL's pipeline class: recognising them by name
with rows of their own is future work; until then such a folder sets its ``generation`` table.

Torch-free: request validation and servicers import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULTS_FILE = "philip_defaults.json"  # its `generation` table; the refiner reads its feedback weights
DTYPES = ("fp16", "bf16", "fp32")  # PHILIP_DTYPE; "" = fp16 on a GPU, fp32 on the CPU
# Each field's accepted types (JSON may say 5 for 5.0; a bool is no number) and how errors name them.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "steps": ((int,), "an integer"), "guidance": ((int, float), "a number"), "scheduler": ((str,), "a string"),
    "native_size": ((int,), "an integer")}


class ModelLoadError(RuntimeError):
    """A model folder is missing, unreadable, or of a family this build does not serve."""


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """What a request that leaves a field unset gets; ``native_size`` 0 = the folder's UNet config decides."""

    steps: int = 8
    guidance: float = 5.0
    scheduler: str = "dpm++"
    native_size: int = 0

    def __post_init__(self) -> None:
        for name, (kinds, what) in _KINDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"{name} must be {what}, got {value!r}")
        object.__setattr__(self, "guidance", float(self.guidance))
        if not 1 <= self.steps <= 100:
            raise ValueError(f"steps must be in 1-100, got {self.steps}")
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= 30.0):
            raise ValueError(f"guidance must be in 0-30, got {self.guidance}")
        if self.native_size and (self.native_size % 8 or not 8 <= self.native_size <= 1024):
            raise ValueError(f"native_size must be a multiple of 8 in 8-1024 (0 = the UNet's), got {self.native_size}")


@dataclass(frozen=True, slots=True)
class Family:
    """One model family: its name, the diffusers pipeline class that loads it, and whether it is served."""

    name: str  # "sd", "sdxl", "sd3", "flux"
    label: str  # for people: logs and errors
    pipeline_class: str
    supported: bool = True


SD = Family("sd", "SD-1.x/2.x", "StableDiffusionPipeline")
SDXL = Family("sdxl", "SDXL", "StableDiffusionXLPipeline")
SD3 = Family("sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline", supported=False)
FLUX = Family("flux", "Flux", "FluxPipeline", supported=False)
FAMILIES: dict[str, Family] = {f.pipeline_class: f for f in (SD, SDXL, SD3, FLUX)}

# Built-in defaults per family. SD's row is what every SD-1.x folder (philip-tiny) has always had, its native
# size the UNet's; SDXL base is trained at 1024 px and made for CFG around 5. Its steps stay at the shared 8: the
# gateway and the studio still count unset steps as 8 (services/gateway/upstream.py, studio/session_state.js)
# until GetModelInfo tells them the model's.
FAMILY_DEFAULTS: dict[str, GenerationDefaults] = {
    "sd": GenerationDefaults(),
    "sdxl": GenerationDefaults(guidance=5.0, native_size=1024),
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
    if not family.supported:
        raise ModelLoadError(f"{model_dir} is a {family.label} model ({family.pipeline_class}); {family.label} is "
                             "not supported yet (issue 21): serve an SD-1.x/2.x or SDXL folder")
    return family


def family_of(pipe: Any) -> Family:
    """The family of a loaded pipeline (by its class: subclasses and test doubles count as SD-1.x)."""
    return FAMILIES.get(type(pipe).__name__, SD)


def generation_defaults(model_dir: str | Path, family: Family) -> tuple[GenerationDefaults, str]:
    """The folder's ``generation`` table laid over the family's built-in row, and where it came from."""
    builtin = FAMILY_DEFAULTS.get(family.name, GenerationDefaults())
    path = Path(model_dir) / DEFAULTS_FILE
    table = _read_table(path) if path.is_file() else None
    if table is None:
        return builtin, f"built-in ({family.label})"
    unknown = set(table) - set(GenerationDefaults.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown generation defaults {sorted(unknown)}; "
                         f"known: {', '.join(GenerationDefaults.__dataclass_fields__)}")
    try:
        return replace(builtin, **table), str(path)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad generation defaults ({exc})") from None


def _read_table(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read model defaults ({exc})") from None
    table = data.get("generation") if isinstance(data, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ValueError(f"{path}: `generation` must be a table of defaults")
    return table
