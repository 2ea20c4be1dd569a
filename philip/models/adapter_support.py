"""Which adapter methods each model family trains and serves, and where a textual-inversion token lives in it.

SD-1.x/2.x: one CLIP encoder takes the token. SDXL: both CLIP encoders (CLIP-L, CLIP-G) take it, each with an
embedding of its own width, saved under ``clip_l`` / ``clip_g`` (the community's SDXL embedding layout). SD3 and
Flux read every prompt through a T5 encoder as well, which a learned CLIP token does not reach: they train LoRA
on the transformer alone, and the token stays an ordinary (made-up) word of the prompt.

Torch-free: the personalizer checks a CreateAdapter request against it before a job is queued, so a combination
a family cannot train is refused when it is asked for, never later in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from philip.models.families import Family


@dataclass(frozen=True, slots=True)
class TokenSlot:
    """One text encoder that takes the adapter's token: pipeline attributes, and the key of its embedding in
    ``learned_embeds.safetensors`` ("" = the token itself, the SD-1.x layout diffusers has always read)."""

    text_encoder: str
    tokenizer: str
    key: str = ""


TOKEN_SLOTS: dict[str, tuple[TokenSlot, ...]] = {
    "sd": (TokenSlot("text_encoder", "tokenizer"),),
    "sdxl": (TokenSlot("text_encoder", "tokenizer", "clip_l"), TokenSlot("text_encoder_2", "tokenizer_2", "clip_g")),
    "sd3": (),
    "flux": (),
}

# What each family trains. LoRA on SD-1.x/SDXL also learns the token's embedding (it names the subject in one
# word); on SD3/Flux it adapts the transformer's attention only.
METHODS: dict[str, tuple[str, ...]] = {
    "sd": ("lora", "textual_inversion"),
    "sdxl": ("lora", "textual_inversion"),
    "sd3": ("lora",),
    "flux": ("lora",),
}

_WHY_NOT = {
    "textual_inversion": "its prompts also pass through a T5 encoder, which a learned CLIP token embedding does not "
                         "reach, so the token alone could not carry the subject",
}


def method_refusal(family: Family, method: str) -> str | None:
    """Why ``family`` cannot train ``method`` (a message a person can act on), or None when it can."""
    methods = METHODS.get(family.name, ())
    if method in methods:
        return None
    if not methods:
        return (f"this server's model is {family.label}, on which PHiLIP trains no adapters; "
                "serve an SD-1.x/2.x, SDXL, SD3 or Flux model to personalise it")
    why = _WHY_NOT.get(method, "it is not implemented for this family")
    offer = " or ".join(m.upper() for m in methods)
    return (f"method {method.upper()} is not available on {family.label} models (this server's model): {why}; "
            f"use {offer} instead")


def token_slots(family_name: str) -> tuple[TokenSlot, ...]:
    """The encoders that take an adapter's token in this family (none: LoRA-only families)."""
    return TOKEN_SLOTS.get(family_name, ())
