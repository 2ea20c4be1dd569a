"""`philip eval feedback-bound`: the best compute_ratio any feedback method could reach on the protocol.

`philip eval feedback` counts UNet evaluations until the first image that matches a hidden
(foreground, background, shape) target. This simulates, without a model, an *oracle* refiner: after
each round it knows exactly which attributes are the target's (of the liked image, or of every image),
keeps them in every later image and draws the rest fresh. No like/dislike method can know more, so
its compute_ratio bounds what FABRIC, seed steering or anything else could reach, given the chance
rates of the attributes and what a feedback round costs.

Fresh attributes are drawn as the eval draws its trials: a prompt from the eval's prompts, the two
colours uniform and distinct, the shape right with ``shape_accuracy`` when the prompt names it and by
chance when it says "a shape". Both methods are charged per round of ``num_images``, as the eval does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from philip.evals.feedback import PROMPTS, FeedbackConfig
from philip.tiny.dataset import COLOR_NAMES, TRAIN_SHAPES


@dataclass(frozen=True)
class BoundConfig:
    trials: int = 20_000
    num_images: int = FeedbackConfig.num_images
    cap: int = FeedbackConfig.cap
    shape_accuracy: float = 0.851  # `philip eval model` on philip-tiny (full captions)
    seed: int = 0


def _fresh(rng: random.Random, shape_p: float) -> list[bool]:
    """Which of (fg, bg, shape) a fresh image gets right; the target is colours 0 and 1."""
    fg, bg = rng.sample(range(len(COLOR_NAMES)), 2)
    return [fg == 0, bg == 1, rng.random() < shape_p]


def _oracle_cost(rng: random.Random, cfg: BoundConfig, shape_p: float, round_cost: float,
                 learns: str) -> float:
    known = [False, False, False]
    seen, cost, first = 0, 0.0, True
    while seen < cfg.cap:
        images = [[k or x for k, x in zip(known, _fresh(rng, shape_p), strict=True)] for _ in range(cfg.num_images)]
        cost += (1.0 if first else round_cost) * cfg.num_images
        if any(all(i) for i in images):
            return cost
        seen += cfg.num_images
        first = False
        if learns == "nothing":
            continue
        # The liked image is the one that misses the fewest attributes (the simulated user's choice).
        for image in images if learns == "all" else [max(images, key=sum)]:
            known = [k or x for k, x in zip(known, image, strict=True)]
    return cost


def _reroll_cost(rng: random.Random, cfg: BoundConfig, shape_p: float) -> float:
    seen = 0
    while seen < cfg.cap:
        seen += cfg.num_images
        if any(all(_fresh(rng, shape_p)) for _ in range(cfg.num_images)):
            break
    return float(seen)


def oracle_compute_ratio(cfg: BoundConfig, round_cost: float, learns: str) -> float:
    """Oracle compute / re-roll compute; ``learns`` is "liked", "all" or "nothing" (a control)."""
    if learns not in ("liked", "all", "nothing"):
        raise ValueError(f"learns must be liked, all or nothing, not {learns!r}")
    rng = random.Random(cfg.seed)
    oracle = reroll = 0.0
    for _ in range(cfg.trials):
        prompt = rng.choice(PROMPTS)
        shape_p = 1 / len(TRAIN_SHAPES) if prompt == "a shape" else cfg.shape_accuracy
        oracle += _oracle_cost(rng, cfg, shape_p, round_cost, learns)
        reroll += _reroll_cost(rng, cfg, shape_p)
    return oracle / reroll


def feedback_bound(cfg: BoundConfig, fabric_ratio: float) -> dict[str, Any]:
    """The oracle's compute_ratio with plain-cost rounds (seed steering alone) and FABRIC-cost rounds."""
    out: dict[str, Any] = {"trials": cfg.trials, "cap_images": cfg.cap, "num_images": cfg.num_images,
                           "shape_accuracy": cfg.shape_accuracy, "fabric_ratio": fabric_ratio}
    for learns in ("liked", "all"):
        for name, cost in (("plain_rounds", 1.0), ("fabric_rounds", fabric_ratio)):
            out[f"oracle_knows_{learns}_{name}"] = round(oracle_compute_ratio(cfg, cost, learns), 4)
    out["control_knows_nothing_plain_rounds"] = round(oracle_compute_ratio(cfg, 1.0, "nothing"), 4)
    return out
