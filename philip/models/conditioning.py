"""What each family's UNet is conditioned on, built one way for the generator, the refiner and FABRIC.

SD-1.x: one text encoder's hidden states. SDXL: two encoders' hidden states concatenated, plus
``added_cond_kwargs``: encoder 2's pooled projection (``text_embeds``) and six ``time_ids`` (original size, crop
corner, target size). SD3: CLIP-L and CLIP-G penultimate states (padded to T5's width) then T5's tokens, both
CLIPs' projections pooled; negatives encoded the same way. Flux: T5's tokens and CLIP's pooled output, and no
negative (guidance-distilled: no unconditional branch). diffusers' ``encode_prompt`` takes different positional
parameters per family (SDXL's second is ``prompt_2``; SD3's ``prompt_2`` and ``prompt_3`` have no default; Flux's
has no ``do_classifier_free_guidance``), so it is only ever called by keyword here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from philip.models.families import FLUX, SD3, SDXL, family_of


@dataclass(frozen=True)
class PromptEmbeds:
    """Text conditioning of a batch: the context tokens, and SDXL's pooled embedding (None for SD-1.x)."""

    embeds: torch.Tensor  # (B, tokens, context)
    pooled: torch.Tensor | None = None  # (B, projection)


def encode_prompts(pipe: Any, prompts: str | list[str]) -> PromptEmbeds:
    """``prompts`` encoded as the pipeline encodes a (positive) prompt (every encoder reading the same text)."""
    family = family_of(pipe)
    if family is FLUX:  # (T5 tokens, CLIP pooled, text ids)
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe.device,
                                               num_images_per_prompt=1)
        return PromptEmbeds(embeds, pooled)
    more = {"prompt_2": None, "prompt_3": None} if family is SD3 else {}
    out = pipe.encode_prompt(prompt=prompts, device=pipe.device, num_images_per_prompt=1,
                             do_classifier_free_guidance=False, **more)
    return PromptEmbeds(out[0], out[2] if len(out) > 2 else None)


def unconditional(pipe: Any) -> PromptEmbeds:
    """No prompt, as the family was trained on it: SD-1.x encodes "", SDXL base (``force_zeros_for_empty_prompt``)
    was trained with zeros there. FABRIC's reference pass is conditioned on it."""
    empty = encode_prompts(pipe, "")
    if not _zeros_for_empty(pipe):
        return empty
    assert empty.pooled is not None  # an SDXL pipeline always pools
    return PromptEmbeds(torch.zeros_like(empty.embeds), torch.zeros_like(empty.pooled))


def prompt_kwargs(pipe: Any, prompts: list[str], negatives: list[str]) -> dict[str, Any]:
    """The pipeline-call arguments conditioning image i on ``prompts[i]`` against ``negatives[i]``.

    SD-1.x and SD3 take the strings (as SD-1.x always has): their encoders pad every prompt to a fixed length
    without attention masks, so each row is encoded alone (SD3 has no zeros-for-empty rule: "" is encoded). SDXL
    gets embeddings in which an empty negative is zeros row by row: diffusers zeroes the negatives of a whole call
    or none (only when ``negative_prompt`` is None), and an image must not depend on which requests share its
    batch. Flux gets the prompts only: without an unconditional branch a negative prompt has nothing to act in
    (diffusers' ``true_cfg_scale`` would add one at twice the cost; not used).
    """
    family = family_of(pipe)
    if family is FLUX:
        return {"prompt": prompts}
    if family is not SDXL:
        return {"prompt": prompts, "negative_prompt": negatives}
    with torch.inference_mode():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompts, negative_prompt=negatives, device=pipe.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True)
        if _zeros_for_empty(pipe):
            empty = torch.tensor([not n.strip() for n in negatives], device=negative.device)
            negative = negative * ~empty[:, None, None]
            negative_pooled = negative_pooled * ~empty[:, None]
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled}


def reference_added_cond(added: dict[str, Any] | None, uncond: PromptEmbeds, n: int,
                         like: torch.Tensor) -> dict[str, Any] | None:
    """The ``added_cond_kwargs`` for ``n`` reference latents beside a main UNet call that got ``added``: the
    unconditional pooled embedding, and the main call's time ids (references are encoded at the batch's size, so
    they share its original and target size). None for a UNet without added conditions (SD-1.x)."""
    if not added:
        return None
    if uncond.pooled is None:
        raise ValueError("the UNet takes added_cond_kwargs (text_embeds, time_ids) but no pooled embedding was given")
    pooled = uncond.pooled.to(device=like.device, dtype=like.dtype)
    return {"text_embeds": pooled[:1].expand(n, -1), "time_ids": added["time_ids"][-1:].expand(n, -1)}


def sdxl_added_cond(pooled: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
    """SDXL's ``added_cond_kwargs`` for a batch of uncropped ``height`` x ``width`` images (what the pipeline builds
    for a call at that size, and what adapter training conditions on): the pooled embeddings (B x projection) as
    ``text_embeds``, and per image six ``time_ids``: original size, crop corner (0, 0), target size."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype, device=pooled.device)
    return {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], -1)}


def _zeros_for_empty(pipe: Any) -> bool:
    return family_of(pipe) is SDXL and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
