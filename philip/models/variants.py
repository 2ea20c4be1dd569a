"""Few-step distillations that share a family's pipeline class: SDXL-Turbo (and SD-Turbo) and SDXL-Lightning.

Their folders say ``StableDiffusionXLPipeline`` like SDXL base, yet they want other defaults (1-4 steps, guidance
0, trailing timestep spacing). What picks the variant, first rule that answers:

1. the folder's ``philip_defaults.json`` ``variant`` key ("turbo" | "lightning" | "" for the base);
2. the file names of ``PHILIP_UNET_PATH`` / ``PHILIP_BASE_LORA`` (``sdxl_lightning_4step_unet.safetensors``:
   "lightning" or "<N>step" is Lightning at N steps; "turbo" is Turbo);
3. the model folder's name (its last three path parts, so a hub cache's ``models--stabilityai--sdxl-turbo/
   snapshots/<hash>`` counts).

The rule that chose is logged (``model.defaults``), so an operator sees why a folder got Turbo's defaults.
Torch-free.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("turbo", "lightning")
# Lightning's files: sdxl_lightning_4step_unet.safetensors, ..._8step_lora; its step counts only, so a fine-tune's
# "checkpoint-5000steps" folder is no Lightning.
_STEPS = re.compile(r"(?<!\d)([1248])[-_]?step")
_LABELS = {"turbo": "Turbo", "lightning": "Lightning"}


@dataclass(frozen=True, slots=True)
class Variant:
    """Which distillation a folder is ("" = the family's base model), why, and a step count its file names."""

    name: str = ""
    rule: str = "none of the variant rules matched"
    steps: int = 0  # Lightning's "<N>step" (0 = the row's default)

    def label(self, family_label: str) -> str:
        """For people: "SDXL-Turbo", "SDXL-Lightning (4-step)", else the family's own label."""
        if not self.name:
            return family_label
        base = f"{family_label.split('-')[0].split('/')[0]}-{_LABELS[self.name]}"
        return f"{base} ({self.steps}-step)" if self.steps else base


def detect_variant(model_dir: str | Path, unet_path: str = "", base_lora: str = "") -> Variant:
    """The variant of the folder with these load options (module docstring); ValueError for a bad ``variant``."""
    declared = _declared(Path(model_dir))
    if declared is not None:
        return declared
    for setting, value in (("PHILIP_UNET_PATH", unet_path), ("PHILIP_BASE_LORA", base_lora)):
        found = _from_name(Path(value).name) if value else None
        if found is not None:
            return Variant(found.name, f"{setting} file name {Path(value).name!r}", found.steps)
    name = "/".join(Path(model_dir).resolve().parts[-3:])
    found = _from_name(name)
    if found is not None:
        return Variant(found.name, f"model folder name {name!r}", found.steps)
    return Variant()


def _declared(model_dir: Path) -> Variant | None:
    path = model_dir / "philip_defaults.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read model defaults ({exc})") from None
    if not isinstance(data, dict) or "variant" not in data:
        return None
    value = data["variant"]
    if value not in ("", *VARIANTS):
        raise ValueError(f"{path}: variant must be one of {', '.join(VARIANTS)} or empty (the base model), "
                         f"got {value!r}")
    return Variant(value, f"{path} variant {value!r}")


def _from_name(name: str) -> Variant | None:
    lowered = name.lower()
    steps = _STEPS.search(lowered)
    if "lightning" in lowered or steps is not None:
        return Variant("lightning", "", int(steps.group(1)) if steps else 0)
    if "turbo" in lowered:
        return Variant("turbo", "")
    return None


__all__ = ["VARIANTS", "Variant", "detect_variant"]
