"""Seed steering: start round n+1 from initial noises near the liked images' noises.

An image's initial noise is a function of its seed (:func:`initial_noise` redraws exactly what
diffusers' ``prepare_latents`` drew), so liked images can be revisited with controlled variation
by passing :func:`steer_noise`'s result as ``pipe(latents=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor


def initial_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The noise ``prepare_latents`` draws for one image with ``torch.Generator().manual_seed(seed)``.

    ``shape`` is one image's latent shape, ``(1, C, h, w)`` (or ``(C, h, w)``, same values). This
    is the noise before the scheduler's ``init_noise_sigma`` scaling, as ``pipe(latents=...)`` takes it.
    """
    # diffusers' own sampler, so the draw stays identical to the pipeline's (CPU, float32).
    generator = torch.Generator().manual_seed(seed)
    return randn_tensor(tuple(shape), generator=generator, device=torch.device("cpu"), dtype=torch.float32)


def steer_noise(
    liked_noises: Sequence[torch.Tensor],
    n: int,
    diversity: float,
    generator: torch.Generator | None = None,
    shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """``n`` initial noises (n, C, h, w) near the liked images' noises, cycling through the likes.

    Each is the slerp from a liked noise toward fresh Gaussian noise by ``diversity``
    (0: the liked noise itself, 1: independent fresh noise), its norm moved from the liked
    noise's to sqrt(numel), a Gaussian's expected norm, by the same fraction, so in-between
    noises stay in the Gaussian shell instead of shrinking as a linear blend would.
    With no likes the result is fresh noise of ``shape`` (one image's shape).
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    likes = [_one_image(x).float().cpu() for x in liked_noises]
    if likes:
        image_shape = tuple(likes[0].shape)
        if any(tuple(x.shape) != image_shape for x in likes):
            raise ValueError(f"liked noises must share one shape, got {[tuple(x.shape) for x in likes]}")
    elif shape is None:
        raise ValueError("shape is required when there are no liked noises")
    else:
        image_shape = tuple(_one_image(torch.empty(tuple(shape))).shape)
    out = []
    for i in range(n):
        # Always draw, so the generator advances the same way whatever the diversity.
        fresh = torch.randn(image_shape, generator=generator)
        if not likes:
            out.append(fresh)
        elif diversity == 0.0:
            out.append(likes[i % len(likes)].clone())
        else:
            out.append(_slerp(likes[i % len(likes)], fresh, diversity))
    return torch.stack(out) if out else torch.zeros(0, *image_shape)


def _one_image(x: torch.Tensor) -> torch.Tensor:
    """Drop a leading batch axis of size 1 from a 4-D latent."""
    return x[0] if x.ndim == 4 and x.shape[0] == 1 else x


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    a_dir, b_dir = a / a.norm(), b / b.norm()
    omega = torch.arccos((a_dir * b_dir).sum().clamp(-1.0, 1.0))
    if float(omega) < 1e-4:
        direction = torch.lerp(a_dir, b_dir, t)  # (near) parallel: slerp's formula divides by ~0
    else:
        direction = (torch.sin((1 - t) * omega) * a_dir + torch.sin(t * omega) * b_dir) / torch.sin(omega)
    norm = (1 - t) * a.norm() + t * math.sqrt(a.numel())
    return direction / direction.norm() * norm
