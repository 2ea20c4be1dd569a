"""Which part of an image's initial noise carries which attribute on philip-tiny (a research probe).

A blind refiner could only build on a like with one colour right if some part of the noise carried
the foreground colour and another the background. For each parent seed this draws children that
keep one part of the parent's noise and take the rest from fresh noise, and prints how often a child
keeps the parent's fg / bg / shape (chance: about 0.12 / 0.13 / 0.5). ``models/README.md`` quotes it.

    .venv/bin/python scripts/noise_subspaces.py [--parents 36] [--model models/philip-tiny]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from philip.models.pipelines import load_pipeline, make_scheduler
from philip.tiny.measure import Measurement, measure
from services.refiner.seeds import initial_noise

PROMPTS = ("a circle", "a square", "a triangle")
Mix = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (parent, fresh) -> child noise


def _low(x: torch.Tensor, k: int = 4) -> torch.Tensor:
    """The k x k block means of a (C, h, w) noise, as a (C, h, w) tensor."""
    return F.interpolate(F.avg_pool2d(x[None], k), scale_factor=k, mode="nearest")[0]


def _mixes(h: int, w: int, channels: int) -> dict[str, Mix]:
    centre = torch.zeros(1, h, w)
    centre[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    mixes: dict[str, Mix] = {
        "centre kept": lambda p, f: p * centre + f * (1 - centre),
        "border kept": lambda p, f: p * (1 - centre) + f * centre,
        "low frequencies kept": lambda p, f: _low(p) + (f - _low(f)),
        "high frequencies kept": lambda p, f: _low(f) + (p - _low(p)),
    }
    for c in range(channels):
        mixes[f"channel {c} fresh"] = _fresh_channel(c, channels)
    return mixes


def _fresh_channel(c: int, channels: int) -> Mix:
    one = torch.zeros(channels, 1, 1)
    one[c] = 1
    return lambda p, f: p * (1 - one) + f * one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", type=int, default=36)
    parser.add_argument("--model", default="models/philip-tiny")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.scheduler = make_scheduler(pipe, "dpm++")
    shape = (int(pipe.unet.config.in_channels), 16, 16)  # 64 px images
    mixes = _mixes(shape[1], shape[2], shape[0])

    def draw(noises: list[torch.Tensor], prompt: str) -> list[Measurement]:
        with torch.inference_mode():
            images = pipe(prompt=[prompt] * len(noises), num_inference_steps=8, guidance_scale=2.0,
                          latents=torch.stack(noises), width=64, height=64).images
        return [measure(image) for image in images]

    kept = {name: [0, 0, 0] for name in mixes}
    for seed in range(args.parents):
        parent = initial_noise(seed, shape)
        fresh = torch.randn(shape, generator=torch.Generator().manual_seed(10_000 + seed))
        parent_m, *children = draw([parent, *(mix(parent, fresh) for mix in mixes.values())], PROMPTS[seed % 3])
        for name, child in zip(mixes, children, strict=True):
            for i, attr in enumerate(("fg", "bg", "shape")):
                kept[name][i] += getattr(child, attr) == getattr(parent_m, attr)
    print(f"children keeping the parent's fg / bg / shape ({args.parents} parents, guidance 2, 8 steps):")
    for name, counts in kept.items():
        print(f"  {name:22s} " + " / ".join(f"{c / args.parents:.2f}" for c in counts))


if __name__ == "__main__":
    main()
