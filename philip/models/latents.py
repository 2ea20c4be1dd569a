"""Between the VAE and the UNet, for every family: latents as the UNet sees them (scaled, and shifted where the
VAE's config has a ``shift_factor``), and the VAE's decode and encode in its own dtype (fp32 where its config
sets ``force_upcast``: :func:`~philip.models.pipelines.load_pipeline` keeps such a VAE in fp32, since SDXL's
overflows to NaN in fp16)."""

from __future__ import annotations

from typing import Any

import torch


def to_vae_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """UNet latents -> what the VAE decodes, in the VAE's dtype."""
    out = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    return out + shift if shift is not None else out  # SD-1.x/SDXL have none: bit for bit the old maths


def to_unet_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """What the VAE encoded -> UNet latents."""
    shift = getattr(vae.config, "shift_factor", None)
    return (latents - shift if shift is not None else latents) * vae.config.scaling_factor


def decode_pixels(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """UNet latents (B x C x h x w) -> pixels in [-1, 1] (B x 3 x H x W), in the VAE's dtype."""
    vae = pipe.vae
    pixels: torch.Tensor = vae.decode(to_vae_latents(vae, latents), return_dict=False)[0]
    return pixels


def encode_pixels(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> clean UNet latents: the posterior mean for ``AutoencoderKL``, ``.latents`` for
    ``AutoencoderTiny`` (which has no distribution)."""
    vae = pipe.vae
    out = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype))
    dist = getattr(out, "latent_dist", None)
    return to_unet_latents(vae, dist.mean if dist is not None else out.latents)


def keep_vae_fp32(pipe: Any) -> None:
    """Move a half-precision VAE whose config sets ``force_upcast`` to fp32, once at load: diffusers upcasts
    it around each decode, but the services decode latents themselves (and twice per preview)."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and vae.dtype != torch.float32 and getattr(vae.config, "force_upcast", False):
        vae.to(dtype=torch.float32)
