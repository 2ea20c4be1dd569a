"""Checkpoint files for the tiny SDXL folder, shaped as SDXL-Lightning ships them: a UNet-only .safetensors file
(or a UNet folder) and a LoRA .safetensors file. Random weights: they prove what loads where, nothing more."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def fresh_unet(model_dir: Path, seed: int) -> UNet2DConditionModel:
    """A UNet of the folder's config with new random weights (so a test can tell it from the folder's own)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(model_dir / "unet")))


def save_unet_file(model_dir: Path, path: Path, seed: int, drop: str = "") -> Path:
    """One .safetensors file of a fresh UNet's state dict, without the keys containing ``drop`` when given."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in fresh_unet(model_dir, seed).state_dict().items()
             if not (drop and drop in k)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def save_lora_file(model_dir: Path, path: Path, seed: int, rank: int = 4) -> Path:
    """A diffusers-format LoRA on the UNet's attention projections, with non-zero (random) up weights."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=LORA_TARGETS))
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(str(path.parent), unet_lora_layers=state, weight_name=path.name)
    return path


def unet_output(pipe: object, seed: int = 0) -> torch.Tensor:
    """The pipeline's UNet on fixed inputs (latents, context, SDXL's added conditions)."""
    unet = pipe.unet  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 4, unet.config.cross_attention_dim, generator=g)
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(1, pooled_dim, generator=g),
             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
