"""How each model family trains an adapter: which encoders take the token, which network the LoRA adapts, and
the loss of one batch.

SD-1.x/2.x: the DDPM loss (epsilon or v target) of a UNet conditioned on one encoder's hidden states.
SDXL: the same loss, the UNet conditioned as the pipeline conditions it (both encoders' hidden states, encoder
2's pooled embedding as ``text_embeds``, ``time_ids``), the prompt re-encoded every step so the token's rows in
both encoders learn. SD3/Flux: flow matching (``x_t = (1 - sigma) x0 + sigma noise``, target ``noise - x0``) of
the transformer; the text encoders stay frozen (LoRA only), so the prompt is encoded once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from philip.models.conditioning import encode_prompts, sdxl_added_cond
from philip.models.families import FLUX, SD, SD3, SDXL, Family
from philip.models.latents import pack_latents
from philip.models.pipelines import denoiser_model

# Attention projections (what DreamBooth-LoRA adapts) plus the transformer blocks' in/out and
# feed-forward projections and the ResNet convolutions: philip-tiny never drew a star, and on
# the star evaluation attention alone reached a subject rate of 0.05-0.21, +proj/ff 0.29,
# +convolutions 0.62 (600 steps, rank 8). Every name is one diffusers' LoRA loader maps.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2")
# What DreamBooth-LoRA adapts on the bigger families: the attention projections (SDXL's UNet, SD3's and Flux's
# joint-attention image side), as diffusers' DreamBooth-LoRA examples do.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FLUX_TRAIN_GUIDANCE = 1.0  # a guidance-embedded Flux (dev) trains at 1, as diffusers' DreamBooth-LoRA example does


class Recipe:
    """One family's training recipe over a loaded pipeline whose new tokens (if any) are in place: ``denoiser`` is
    what the LoRA adapts, ``loss`` one batch's training loss (fp32; inputs in the denoiser's dtype)."""

    lora_targets: tuple[str, ...] = ATTENTION_TARGETS

    def __init__(self, pipe: Any, prompt: str, size: int) -> None:
        self.pipe = pipe
        self.prompt = prompt
        self.size = size

    @property
    def denoiser(self) -> torch.nn.Module:
        module: torch.nn.Module = denoiser_model(self.pipe)
        return module

    def loss(self, z0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def preview_kwargs(self) -> dict[str, Any]:
        """Extra pipeline-call arguments of a preview (the training size, where the family's default differs)."""
        return {"height": self.size, "width": self.size}


class NoiseRecipe(Recipe):
    """SD-1.x: DDPM noise on the UNet's own schedule, epsilon or v target, one encoder's hidden states."""

    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __init__(self, pipe: Any, prompt: str, size: int) -> None:
        from diffusers import DDPMScheduler

        super().__init__(pipe, prompt, size)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        tokenizer = pipe.tokenizer
        self.prompt_ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids.to(pipe.device)

    def loss(self, z0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        batch = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g).to(z0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch,), generator=g)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        pred = self.predict(zt, t.to(zt.device), batch)
        return F.mse_loss(pred.float(), target.float())

    def predict(self, zt: torch.Tensor, t: torch.Tensor, batch: int) -> torch.Tensor:
        hidden = self.pipe.text_encoder(self.prompt_ids.expand(batch, -1))[0]
        out: torch.Tensor = self.pipe.unet(zt, t, hidden).sample
        return out

    def preview_kwargs(self) -> dict[str, Any]:
        return {}  # SD-1.x previews as they always were: the UNet's native size


class SDXLRecipe(NoiseRecipe):
    """SDXL: the DDPM loss with the UNet's added conditions; both encoders re-encode the prompt every step (by
    keyword, through the pipeline's own ``encode_prompt``), so both token rows get gradients."""

    lora_targets = ATTENTION_TARGETS

    def predict(self, zt: torch.Tensor, t: torch.Tensor, batch: int) -> torch.Tensor:
        text = encode_prompts(self.pipe, self.prompt)
        assert text.pooled is not None  # an SDXL pipeline always pools
        # Trained at the square size the references were resized to, uncropped: what a generation asks for.
        added = sdxl_added_cond(text.pooled.expand(batch, -1), self.size, self.size)
        out: torch.Tensor = self.pipe.unet(zt, t, encoder_hidden_states=text.embeds.expand(batch, -1, -1),
                                           added_cond_kwargs=added).sample
        return out


class FlowRecipe(Recipe):
    """SD3: flow matching on the transformer, sigmas drawn uniformly and shifted as the model's scheduler shifts
    its own (SD3's shift 3 puts more of them at high noise), timesteps ``sigma * num_train_timesteps``."""

    def __init__(self, pipe: Any, prompt: str, size: int) -> None:
        super().__init__(pipe, prompt, size)
        config = pipe.scheduler.config
        self.timesteps = float(config.num_train_timesteps)
        self.shift = float(config.get("shift", 1.0))
        with torch.no_grad():  # frozen encoders: one encoding serves every step
            text = encode_prompts(pipe, prompt)
        self.dtype = pipe.transformer.dtype
        self.embeds = text.embeds.to(self.dtype)
        self.pooled = text.pooled.to(self.dtype) if text.pooled is not None else None

    def loss(self, z0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        batch = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g).to(z0)
        u = torch.rand(batch, generator=g).to(z0)
        sigma = self.shift * u / (1 + (self.shift - 1) * u)
        s = sigma[:, None, None, None]
        zt = (1 - s) * z0 + s * noise
        # In the transformer's dtype (bf16 on a GPU: frozen_dtype); the loss itself in fp32.
        pred = self.predict(zt.to(self.dtype), (sigma * self.timesteps).to(self.dtype))
        return F.mse_loss(pred.float(), (noise - z0).float())

    def predict(self, zt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = zt.shape[0]
        assert self.pooled is not None
        out: torch.Tensor = self.pipe.transformer(
            hidden_states=zt, timestep=t, encoder_hidden_states=self.embeds.expand(batch, -1, -1),
            pooled_projections=self.pooled.expand(batch, -1), return_dict=False)[0]
        return out


class FluxRecipe(FlowRecipe):
    """Flux: the same flow-matching loss on 2x2-packed latent tokens (the loss is a mean over elements, so it is
    taken on the packed prediction against the packed target), timesteps in 0-1, image and text position ids,
    the guidance embedding (dev) at 1."""

    def loss(self, z0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        batch, _, h, w = z0.shape
        noise = torch.randn(z0.shape, generator=g).to(z0)
        sigma = torch.rand(batch, generator=g).to(z0)
        if self.shift != 1.0:
            sigma = self.shift * sigma / (1 + (self.shift - 1) * sigma)
        s = sigma[:, None, None, None]
        zt = (1 - s) * z0 + s * noise
        pred = self.predict_packed(pack_latents(zt).to(self.dtype), sigma.to(self.dtype), h, w)
        return F.mse_loss(pred.float(), pack_latents(noise - z0).float())

    def predict_packed(self, packed: torch.Tensor, sigma: torch.Tensor, h: int, w: int) -> torch.Tensor:
        batch = packed.shape[0]
        text_ids = torch.zeros(self.embeds.shape[1], 3, device=packed.device, dtype=packed.dtype)
        image_ids = self.pipe._prepare_latent_image_ids(batch, h // 2, w // 2, packed.device, packed.dtype)
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), FLUX_TRAIN_GUIDANCE, device=packed.device, dtype=torch.float32)
        assert self.pooled is not None
        out: torch.Tensor = self.pipe.transformer(
            hidden_states=packed, timestep=sigma, guidance=guidance, pooled_projections=self.pooled.expand(batch, -1),
            encoder_hidden_states=self.embeds.expand(batch, -1, -1), txt_ids=text_ids, img_ids=image_ids,
            return_dict=False)[0]
        return out


RECIPES: dict[str, type[Recipe]] = {SD.name: NoiseRecipe, SDXL.name: SDXLRecipe, SD3.name: FlowRecipe,
                                    FLUX.name: FluxRecipe}


def recipe_for(family: Family) -> type[Recipe]:
    """The family's recipe class; ValueError for a family with none."""
    if family.name not in RECIPES:
        raise ValueError(f"training adapters on {family.label} models is not supported")
    return RECIPES[family.name]
