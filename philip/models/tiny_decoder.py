"""TAESD-style tiny decoders (diffusers ``AutoencoderTiny``) for previews: output-size images of the x0 estimate
in a few ms, where a full VAE decode at 1024 px costs about 10.5 TFLOP (more than a whole SDXL-Turbo step).

A model folder opts in by holding one as a subfolder (``taesd/`` for SD-1.x/2.x, ``taesdxl/`` SDXL, ``taesd3/``
SD3, ``taef1/`` Flux; e.g. madebyollin's checkpoints saved there). Its latents must have the model's channel
count; a mismatched one (taesd beside a Flux model) is skipped with a warning, never half-used.

Scaling: the x0 estimate is in the UNet's space (the VAE's latents times ``scaling_factor``, minus its
``shift_factor``). A tiny decoder's config says what it takes, exactly as diffusers' pipelines read it when one
replaces ``pipe.vae``: input = x0 / its ``scaling_factor`` + its ``shift_factor``. TAESD and TAESDXL ship
``scaling_factor`` 1.0 (no shift): they take the UNet's latents as they are, not the full VAE's unscaled ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from philip.logs import get_logger
from philip.models.families import family_of
from philip.models.latents import to_vae_latents
from philip.models.pipelines import denoiser_model

log = get_logger("philip.models.tiny_decoder")

# Each family's folder first; the others are tried after it (a folder named for another family may still fit).
FAMILY_FOLDERS = {"sd": "taesd", "sdxl": "taesdxl", "sd3": "taesd3", "flux": "taef1"}
TINY_DECODER_FOLDERS = tuple(FAMILY_FOLDERS.values())


@dataclass(frozen=True, eq=False)
class TinyDecoder:
    """A loaded ``AutoencoderTiny`` and the folder it came from."""

    vae: Any
    folder: str

    @torch.inference_mode()
    def decode(self, x0: torch.Tensor) -> list[Image.Image]:
        """UNet-space latents (B x C x h x w) -> output-size RGB previews."""
        latents = to_vae_latents(self.vae, x0.to(self.vae.device))
        pixels = self.vae.decode(latents, return_dict=False)[0]  # [-1, 1], like AutoencoderKL's
        rgb = ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in rgb]


def candidate_folders(model_dir: str | Path, family: str) -> list[Path]:
    """The tiny-decoder subfolders ``model_dir`` has, the family's own first."""
    first = FAMILY_FOLDERS.get(family)
    names = [first] if first else []
    names += [name for name in TINY_DECODER_FOLDERS if name != first]
    return [Path(model_dir) / name for name in names if (Path(model_dir) / name / "config.json").is_file()]


def load_tiny_decoder(model_dir: str | Path, pipe: Any) -> TinyDecoder | None:
    """The folder's tiny decoder matching the pipeline's latent channels, on its device and in its dtype; None
    when there is none (previews stay linear)."""
    from diffusers import AutoencoderTiny

    folders = candidate_folders(model_dir, family_of(pipe).name)
    if not folders:
        return None
    channels = int(pipe.vae.config.latent_channels)
    for folder in folders:
        vae = AutoencoderTiny.from_pretrained(str(folder), local_files_only=True)
        if int(vae.config.latent_channels) != channels:
            log.warning("previews.tiny_decoder_mismatch", folder=folder.name,
                        latent_channels=vae.config.latent_channels, model_latent_channels=channels)
            continue
        # fp16 on a GPU like the UNet (TAESD is made for it); the CPU stays fp32.
        vae = vae.to(device=pipe.device, dtype=denoiser_model(pipe).dtype).eval()
        log.info("previews.tiny_decoder", folder=folder.name, scaling_factor=vae.config.scaling_factor,
                 shift_factor=vae.config.shift_factor, dtype=str(vae.dtype).split(".")[-1])
        return TinyDecoder(vae, folder.name)
    return None


__all__ = ["FAMILY_FOLDERS", "TINY_DECODER_FOLDERS", "TinyDecoder", "candidate_folders", "load_tiny_decoder"]
