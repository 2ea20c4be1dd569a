"""GPU speed-ups applied once to a loaded pipeline (:func:`accelerate`, the end of ``load_pipeline``), and the
attention backend in use (:func:`attention_backend`, logged there and reported by ``philip bench gpu``).

* VAE slicing: a batch of 8 decodes image by image, so its activations (GiBs at 1024 px) do not scale with the
  batch; each image's decode is the same maths. VAE tiling only above :data:`TILE_ABOVE_PX` a side (the VAE's
  own tile size when larger), where a whole decode would not fit; below it decodes are untouched.
* channels_last for the UNet on a GPU: the NHWC convolution kernels (MIOpen / cuDNN) are the fast ones in half
  precision. On the CPU it is left alone (no gain, and the tests' numerics stay as they were).
* ``PHILIP_COMPILE=1``: ``torch.compile`` of the blocks that never change between rounds (see :func:`_compile`).
On the CPU with the defaults this only turns slicing on, which changes no output.
"""

from __future__ import annotations

from typing import Any

import torch

from philip.logs import get_logger
from philip.models.families import denoiser_model
from philip.models.load_options import LoadOptions

log = get_logger("philip.models.acceleration")

TILE_ABOVE_PX = 1024
# The denoiser's blocks compiled under PHILIP_COMPILE=1 (class names: diffusers' ResnetBlock2D, FeedForward).
COMPILED_BLOCKS = ("ResnetBlock2D", "FeedForward")
COMPILE_BACKEND = "inductor"  # tests swap in "eager" (same wrapping, no C++ build)


def accelerate(pipe: Any, options: LoadOptions | None = None) -> None:
    """Apply the speed-ups to ``pipe`` in place and log what was done and the attention backend."""
    options = options or LoadOptions()
    gpu = pipe.device.type == "cuda"  # ROCm's torch is torch.cuda too
    vae = getattr(pipe, "vae", None)
    done: dict[str, Any] = {"vae_slicing": _slice_vae(vae), "vae_tiling_above_px": _tile_vae(vae)}
    unet = getattr(pipe, "unet", None)
    if gpu and unet is not None:
        unet.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    if options.compile:
        done["compiled_blocks"] = _compile(denoiser_model(pipe))
    log.info("model.accelerated", **done, **attention_backend(pipe))


def _slice_vae(vae: Any) -> bool:
    if vae is None or not hasattr(vae, "use_slicing"):
        return False
    vae.enable_slicing()
    return True


def _tile_vae(vae: Any) -> int:
    """Tiling from the larger of the VAE's own tile size and TILE_ABOVE_PX; 0 = this VAE cannot tile."""
    if vae is None or not hasattr(vae, "tile_sample_min_size") or not hasattr(vae, "tile_latent_min_size"):
        return 0
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)
    side = max(int(vae.tile_sample_min_size), TILE_ABOVE_PX)
    vae.tile_sample_min_size, vae.tile_latent_min_size = side, side // downscale
    vae.enable_tiling()
    return side


def _compile(module: torch.nn.Module) -> int:
    """Compile each resnet and feed-forward block in place (``nn.Module.compile``: same objects, so hooks, LoRA
    layers and the capture of the UNet's output still see them); returns how many.

    Not the whole UNet, nor its attention: FABRIC swaps the self-attention processors every round (each round
    brings its own references) and adapters change the attention projections, so a whole-UNet graph would be
    guarded on them and recompiled, or broken, every round. Resnets and feed-forwards (most of the FLOPs besides
    attention's matmuls, which SDPA already fuses) never change between rounds. ``dynamic=None``: the first
    new batch size recompiles, later ones reuse a dynamic graph.
    """
    blocks = [m for m in module.modules() if type(m).__name__ in COMPILED_BLOCKS]
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND, dynamic=None)
    return len(blocks)


def attention_backend(pipe: Any) -> dict[str, Any]:
    """What attention runs on: the processors' classes, SDPA's enabled kernels, flash availability, HIP or CUDA."""
    processors = getattr(denoiser_model(pipe), "attn_processors", {})
    cuda = torch.backends.cuda
    kernels = {"flash": cuda.flash_sdp_enabled(), "mem_efficient": cuda.mem_efficient_sdp_enabled(),
               "math": cuda.math_sdp_enabled(), "cudnn": cuda.cudnn_sdp_enabled()}
    device = pipe.device
    return {
        "attention_processors": sorted({type(p).__name__ for p in processors.values()}),
        "sdpa_kernels_enabled": [name for name, on in kernels.items() if on],
        # Compiled in (ROCm builds have it for MI200/MI300 via CK or aotriton); SDPA picks it only on a GPU.
        "flash_available": bool(getattr(cuda, "is_flash_attention_available", lambda: False)()),
        "hip": torch.version.hip or "",
        "cuda": torch.version.cuda or "",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


__all__ = ["COMPILED_BLOCKS", "TILE_ABOVE_PX", "accelerate", "attention_backend"]
