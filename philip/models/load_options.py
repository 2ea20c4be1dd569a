"""How a model folder is loaded beyond its own files: a replacement UNet, a LoRA fused into the base, and the
GPU speed-ups. Torch-free: built from ``settings.models`` wherever a pipeline is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """``PHILIP_UNET_PATH``, ``PHILIP_BASE_LORA`` (+ ``_SCALE``) and ``PHILIP_COMPILE``; the defaults load the
    folder as it is."""

    unet_path: str = ""
    base_lora: str = ""
    base_lora_scale: float = 1.0
    compile: bool = False

    @classmethod
    def from_settings(cls, models: Any) -> LoadOptions:
        """From a :class:`~philip.settings.ModelSettings` (``settings.models``)."""
        return cls(unet_path=models.unet_path, base_lora=models.base_lora, base_lora_scale=models.base_lora_scale,
                   compile=bool(models.compile))
