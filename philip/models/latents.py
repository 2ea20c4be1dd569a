"""Between the VAE and the UNet, for every family: latents as the UNet sees them (scaled, and shifted where the
VAE's config has a ``shift_factor``), and the VAE's decode and encode in its own dtype (fp32 where its config
sets ``force_upcast``: :func:`~philip.models.pipelines.load_pipeline` keeps such a VAE in fp32, since SDXL's
overflows to NaN in fp16)."""

from __future__ import annotations

from typing import Any

import torch

from philip.models.families import FLUX, denoiser_model, family_of


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


# Flux's transformer takes latents as tokens: each 2x2 patch of the 16-channel latent grid is one 64-channel token,
# row-major. The services keep latents as grids (B x C x h x w: previews, decodes, steering) and pack them only at
# the pipeline's door.


def packs_latents(pipe: Any) -> bool:
    """Whether the pipeline's transformer takes 2x2-packed latent tokens (Flux)."""
    return family_of(pipe) is FLUX


def latent_grid(pipe: Any, height: int, width: int) -> tuple[int, int, int]:
    """(channels, h, w) of the latent grid of a ``height`` x ``width`` image, as the pipeline draws its noise."""
    scale = int(pipe.vae_scale_factor)
    if packs_latents(pipe):  # both sides rounded down to whole 2x2 patches, as FluxPipeline.prepare_latents does
        return int(pipe.vae.config.latent_channels), 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    return int(denoiser_model(pipe).config.in_channels), height // scale, width // scale


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h/2 * w/2) x 4C tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B x (h/2 * w/2) x 4C tokens -> B x C x h x w (FluxPipeline._unpack_latents, given the latent grid's sides)."""
    b, _, c4 = tokens.shape
    return tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def grid_latents(pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A pipeline's ``output_type="latent"`` output as a latent grid (Flux's unpacked; the others' as they are)."""
    if latents.ndim != 3:
        return latents
    _, h, w = latent_grid(pipe, height, width)
    return unpack_latents(latents, h, w)


def pipeline_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """A latent grid as the pipeline's ``latents=`` argument takes it (Flux's packed)."""
    return pack_latents(latents) if packs_latents(pipe) else latents
