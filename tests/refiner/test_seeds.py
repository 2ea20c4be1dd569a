"""Seed steering: regenerating a liked image's noise and drawing noises near it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline

from services.refiner.seeds import initial_noise, steer_noise

torch.set_num_threads(1)  # a training job shares this machine

SHAPE = (4, 16, 16)
NUMEL = 4 * 16 * 16


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.arccos((a.flatten() @ b.flatten()) / (a.norm() * b.norm())))


def test_initial_noise_is_what_the_pipeline_draws() -> None:
    # Diffusers' own prepare_latents (unbound; it only needs these two attributes), 64 px -> 16x16 latents.
    fake = SimpleNamespace(vae_scale_factor=4, scheduler=SimpleNamespace(init_noise_sigma=1.0))
    seeds = [3, 11, 42]
    drawn = StableDiffusionPipeline.prepare_latents(
        fake, len(seeds), 4, 64, 64, torch.float32, torch.device("cpu"),
        [torch.Generator().manual_seed(s) for s in seeds],
    )
    for row, seed in zip(drawn, seeds, strict=True):
        assert torch.equal(initial_noise(seed, (1, *SHAPE))[0], row)
    single = StableDiffusionPipeline.prepare_latents(
        fake, 1, 4, 64, 64, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(5)
    )
    assert torch.equal(initial_noise(5, (1, *SHAPE)), single)
    assert torch.equal(initial_noise(5, SHAPE), single[0])


def test_diversity_zero_returns_the_liked_noises_cycling() -> None:
    likes = [initial_noise(1, (1, *SHAPE)), initial_noise(2, (1, *SHAPE))]
    out = steer_noise(likes, 5, 0.0, torch.Generator().manual_seed(0))
    assert out.shape == (5, *SHAPE)
    for i in range(5):
        assert torch.equal(out[i], likes[i % 2][0])


def test_diversity_one_is_independent_of_the_liked_noise() -> None:
    a = steer_noise([initial_noise(1, SHAPE)], 3, 1.0, torch.Generator().manual_seed(9))
    b = steer_noise([initial_noise(2, SHAPE)], 3, 1.0, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.flatten(1).norm(dim=1), torch.full((3,), math.sqrt(NUMEL)))


def test_half_diversity_is_halfway_along_the_great_circle() -> None:
    like = initial_noise(1, SHAPE)
    fresh = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))  # the draw steer_noise makes
    out = steer_noise([like], 1, 0.5, torch.Generator().manual_seed(4))[0]
    omega = _angle(like, fresh)
    assert _angle(out, like) == pytest.approx(omega / 2, abs=1e-3)
    assert _angle(out, fresh) == pytest.approx(omega / 2, abs=1e-3)
    assert float(out.norm()) == pytest.approx((float(like.norm()) + math.sqrt(NUMEL)) / 2, rel=1e-5)
    # A linear blend of two near-orthogonal noises would shrink to ~0.71 of a Gaussian's norm.
    assert float(out.norm()) > 0.95 * math.sqrt(NUMEL)


def test_no_likes_gives_fresh_noise() -> None:
    out = steer_noise([], 2, 0.3, torch.Generator().manual_seed(6), shape=(1, *SHAPE))
    g = torch.Generator().manual_seed(6)
    expected = torch.stack([torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)])
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="shape is required"):
        steer_noise([], 2, 0.3)


@pytest.mark.parametrize("diversity", [-0.1, 1.01, math.nan])
def test_diversity_outside_unit_interval_is_rejected(diversity: float) -> None:
    with pytest.raises(ValueError, match=r"diversity must be in \[0, 1\]"):
        steer_noise([initial_noise(1, SHAPE)], 1, diversity)


def test_liked_noises_must_share_a_shape() -> None:
    with pytest.raises(ValueError, match="share one shape"):
        steer_noise([initial_noise(1, SHAPE), initial_noise(2, (4, 8, 8))], 2, 0.5)
