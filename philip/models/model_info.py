"""What the served model is and offers (GetModelInfo): its family and label, its generation defaults and ranges,
the schedulers a request may name, what feedback acts through, the adapter methods and the preview kinds.

Clients build their forms from it (the studio's steps, a size slider's cap). Torch-free: the generator computes
it once at load, the gateway caches the generator's answer."""

from __future__ import annotations

from dataclasses import dataclass

from philip.generation.requests import PREVIEW_MODES
from philip.models.adapter_support import METHODS
from philip.models.families import FAMILY_DEFAULTS, Family, GenerationDefaults
from philip.models.variants import Variant


@dataclass(frozen=True, slots=True)
class FeedbackCapability:
    """What likes and dislikes act through on this model; ``note`` says it in a sentence for people."""

    fabric: bool  # liked/disliked images condition the denoiser's self-attention
    dislikes_act: bool  # through the unconditional (CFG) branch, at the default guidance
    exploration: bool  # prompt exploration (model-independent: it rewrites the prompt)
    seed_steering: bool  # later rounds draw noise near liked images' seeds
    note: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    family: str  # "sd", "sdxl", ...
    label: str  # "SDXL-Turbo", "SD-1.x/2.x"
    pipeline_class: str
    dtype: str  # fp16 | bf16 | fp32
    defaults: GenerationDefaults  # native_size filled in
    schedulers: tuple[str, ...]
    feedback: FeedbackCapability
    adapter_methods: tuple[str, ...]
    preview_kinds: tuple[str, ...]
    name: str = ""  # the folder's name, "philip-tiny": which weights (label says which kind)


def describe_model(family: Family, variant: Variant, dtype: str, defaults: GenerationDefaults,
                   schedulers: tuple[str, ...], name: str = "") -> ModelInfo:
    """The served model's description from what the loader decided (``defaults``: :func:`served_defaults`'s)."""
    # A variant this family has no row for (a Flux folder named "...turbo...") served the family's defaults.
    served = variant if f"{family.name}-{variant.name}" in FAMILY_DEFAULTS else Variant()
    return ModelInfo(family=family.name, label=served.label(family.label), pipeline_class=family.pipeline_class,
                     dtype=dtype, defaults=defaults, schedulers=schedulers,
                     feedback=feedback_capability(family, defaults),
                     # what the personalizer trains on this family (SD3/Flux: LoRA only; adapter_support.py)
                     adapter_methods=METHODS.get(family.name, ()), preview_kinds=PREVIEW_MODES, name=name)


def feedback_capability(family: Family, defaults: GenerationDefaults) -> FeedbackCapability:
    """Likes steer the next round's seeds everywhere, and likes and dislikes steer prompt exploration. FABRIC needs
    self-attention layers (``attn1``), and disliked images act through it on the unconditional half of the CFG
    batch, which guidance-distilled models lack and which guidance <= 1 never runs (services/refiner/fabric.py)."""
    uncond = family.cfg and defaults.guidance > 1
    if not family.fabric:
        note = (f"{family.label} has no self-attention layers for FABRIC: likes steer the next round's seeds, and "
                "likes and dislikes act only through seed steering and prompt exploration")
        if not family.cfg:
            note += "; it has no unconditional branch, so negative prompts do nothing"
    elif not uncond:
        note = (f"guidance {defaults.guidance:g} by default runs no unconditional branch: dislikes act through seed "
                "steering and prompt exploration unless a request sets guidance above 1")
    else:
        note = "likes and dislikes act through FABRIC, seed steering and prompt exploration"
    return FeedbackCapability(fabric=family.fabric, dislikes_act=family.fabric and uncond, exploration=True,
                              seed_steering=True, note=note)


__all__ = ["FeedbackCapability", "ModelInfo", "describe_model", "feedback_capability"]
