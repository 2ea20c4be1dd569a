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

A *blind* refiner is what FABRIC and seed steering are: it cannot tell the liked image's right
attributes from its wrong ones, so each child keeps each attribute of its parent with a probability
that is a property of the mechanism (``keep``: fg, bg, shape), whatever the target. It steers from
the likes as the refiner does (image i from the (i mod likes)-th newest), and the user likes as the
eval's ``--user`` does. Sweeping ``keep`` gives the best any blind mechanism could reach at a cost;
:func:`keep_from_agreement` turns the eval's measured parent-child agreement into ``keep``.

A *prompt explorer* (:mod:`services.refiner.explore`; :func:`explorer_compute_ratio`) is not blind
because it chose what to ask for: from round 2 on it writes each image's full caption from a posterior
over the target that the user's choices feed. The model draws the asked colours with
``caption_colour_accuracy`` and the shape with ``caption_shape_accuracy``; its rounds cost what plain
rounds cost.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from philip.evals.feedback import PROMPTS, USERS, FeedbackConfig, Target
from philip.tiny.dataset import COLOR_NAMES, TRAIN_SHAPES, prompt_vocabulary
from philip.tiny.measure import Measurement
from services.refiner.explore import DEFAULT_BETA, PromptExplorer, PromptVocabulary

Keep = tuple[float, float, float]  # P(a child keeps its parent's fg, bg, shape)
# The sweep of the best blind refiner: colours kept alike (nothing tells fg from bg), the shape apart.
COLOUR_KEEPS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
SHAPE_KEEPS = (0.0, 0.5, 0.8, 1.0)


@dataclass(frozen=True)
class BoundConfig:
    trials: int = 20_000
    num_images: int = FeedbackConfig.num_images
    cap: int = FeedbackConfig.cap
    shape_accuracy: float = 0.851  # `philip eval model` on philip-tiny (full captions)
    seed: int = 0
    user: str = FeedbackConfig.user
    blind_trials: int = 3_000  # per keep setting of the sweep (32 settings)
    # What the model draws for a full caption (the prompt explorer's): `philip eval model` at guidance 5
    # (fg 1.00, shape 0.851; at the feedback eval's guidance 2, fg 0.994, shape 0.940).
    caption_colour_accuracy: float = 1.0
    caption_shape_accuracy: float = 0.851

    def __post_init__(self) -> None:
        accuracies = (self.shape_accuracy, self.caption_colour_accuracy, self.caption_shape_accuracy)
        if self.trials < 1 or self.blind_trials < 1 or self.cap < 1 or not all(0.0 <= a <= 1.0 for a in accuracies):
            raise ValueError("needs trials >= 1, blind_trials >= 1, cap >= 1 and accuracies in [0, 1]")
        if self.user not in USERS:
            raise ValueError(f"user {self.user!r} is not one of {', '.join(USERS)}")


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


def _shape(rng: random.Random, target: Target, shape_p: float) -> str:
    """The target's shape with ``shape_p``, else one of the others."""
    return target.shape if rng.random() < shape_p else rng.choice([s for s in TRAIN_SHAPES if s != target.shape])


def _drawing(rng: random.Random, target: Target, shape_p: float) -> Measurement:
    """A fresh image as the judge would read it: distinct uniform colours, the target's shape with ``shape_p``."""
    fg, bg = rng.sample(COLOR_NAMES, 2)
    return Measurement(fg, bg, _shape(rng, target, shape_p), 0.0, 0.0, 0.0)


def _child(rng: random.Random, parent: Measurement, target: Target, shape_p: float, keep: Keep) -> Measurement:
    """Each attribute kept with its ``keep``, the others drawn fresh (colours stay distinct)."""
    kept = [rng.random() < k for k in keep]
    fg = parent.fg if kept[0] else None
    bg = parent.bg if kept[1] else None
    fg = fg or rng.choice([c for c in COLOR_NAMES if c != bg])
    bg = bg or rng.choice([c for c in COLOR_NAMES if c != fg])
    shape = parent.shape if kept[2] else _shape(rng, target, shape_p)
    return Measurement(fg, bg, shape, 0.0, 0.0, 0.0)


def _blind_cost(rng: random.Random, cfg: BoundConfig, target: Target, shape_p: float, keep: Keep,
                round_cost: float) -> float:
    likes: list[Measurement] = []  # newest first, as the refiner cycles through them
    seen, cost = 0, 0.0
    while seen < cfg.cap:
        if likes:
            images = [_child(rng, likes[i % len(likes)], target, shape_p, keep) for i in range(cfg.num_images)]
        else:
            images = [_drawing(rng, target, shape_p) for _ in range(cfg.num_images)]
        cost += (round_cost if likes else 1.0) * cfg.num_images
        if any(target.distance(m) == 0 for m in images):
            return cost
        seen += cfg.num_images
        likes.insert(0, min(images, key=lambda m: target.closeness(m, cfg.user)))  # ties: the first, as the eval
    return cost


def blind_compute_ratio(cfg: BoundConfig, keep: Keep, round_cost: float) -> float:
    """A blind refiner's compute / re-roll compute (see the module doc), over ``cfg.blind_trials`` trials."""
    if not all(0.0 <= k <= 1.0 for k in keep):
        raise ValueError(f"keep probabilities must be in [0, 1], got {keep}")
    return _against_rerolling(cfg, lambda rng, prompt, target, shape_p: _blind_cost(rng, cfg, target, shape_p, keep,
                                                                                   round_cost))


TrialCost = Callable[[random.Random, str, Target, float], float]  # (rng, prompt, target, P(right shape)) -> cost


def _against_rerolling(cfg: BoundConfig, method: TrialCost) -> float:
    """``method``'s compute over blind re-rolling's, both on the same ``cfg.blind_trials`` drawn trials."""
    rng = random.Random(cfg.seed)
    total = reroll = 0.0
    for _ in range(cfg.blind_trials):
        prompt = rng.choice(PROMPTS)
        named = prompt != "a shape"
        fg, bg = rng.sample(COLOR_NAMES, 2)
        target = Target(fg, bg, prompt.removeprefix("a ") if named else rng.choice(TRAIN_SHAPES))
        shape_p = cfg.shape_accuracy if named else 1 / len(TRAIN_SHAPES)
        total += method(rng, prompt, target, shape_p)
        reroll += _reroll_cost(rng, cfg, shape_p)
    return total / reroll


def keep_from_agreement(agreement: float, chance: float) -> float:
    """P(keep) from how often children agree with their parent and unrelated images agree (the eval's two
    fields): a child that does not keep an attribute still agrees by chance, so agreement = k + (1 - k) chance."""
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance agreement must be in [0, 1), got {chance}")
    return min(1.0, max(0.0, (agreement - chance) / (1.0 - chance)))


def parse_keep(text: str) -> Keep:
    """``"0.6,0.69,0.47"`` -> (0.6, 0.69, 0.47): P(keep) of fg, bg and shape, each in [0, 1]."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not three numbers fg,bg,shape") from None
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{text!r} must be three probabilities in [0, 1]: fg,bg,shape")
    return values[0], values[1], values[2]


def best_blind(cfg: BoundConfig, round_cost: float) -> dict[str, Any]:
    """The sweep's best blind refiner: its keep probabilities and compute_ratio."""
    ratios = {(c, c, s): blind_compute_ratio(cfg, (c, c, s), round_cost) for c in COLOUR_KEEPS for s in SHAPE_KEEPS}
    keep = min(ratios, key=ratios.__getitem__)
    return {"keep_fg_bg_shape": list(keep), "compute_ratio": round(ratios[keep], 4)}


_TINY_VOCABULARY = PromptVocabulary.from_json(prompt_vocabulary())  # what philip-tiny's folder ships


def _explorer_cost(rng: random.Random, np_rng: np.random.Generator, cfg: BoundConfig, prompt: str,
                   target: Target, shape_p: float, beta: float) -> float:
    explorer = PromptExplorer(_TINY_VOCABULARY, prompt, np_rng, beta)
    seen, cost = 0, 0.0
    while seen < cfg.cap:
        if seen == 0:  # round 1 is the user's own prompt: the explorer cannot tell what its images show
            asked, images = None, [_drawing(rng, target, shape_p) for _ in range(cfg.num_images)]
        else:
            asked = explorer.propose(cfg.num_images)
            images = [_asked_drawing(rng, a, cfg.caption_colour_accuracy, cfg.caption_shape_accuracy) for a in asked]
        cost += cfg.num_images
        if any(target.distance(m) == 0 for m in images):
            return cost
        seen += cfg.num_images
        if asked is not None:
            closeness = [target.closeness(m, cfg.user) for m in images]
            liked = min(range(len(images)), key=closeness.__getitem__)
            disliked = max(range(len(images)), key=closeness.__getitem__)
            explorer.update(asked, liked, disliked if closeness[disliked] > closeness[liked] else None)
    return cost


def _asked_drawing(rng: random.Random, asked: tuple[str, ...], colour_accuracy: float,
                   shape_accuracy: float) -> Measurement:
    """What the model draws for a full caption: each asked colour with ``colour_accuracy``, the shape with
    ``shape_accuracy``; a missed attribute is another value (colours stay distinct)."""
    fg, shape, bg = asked  # the vocabulary's slot order
    if rng.random() >= colour_accuracy:
        fg = rng.choice([c for c in COLOR_NAMES if c not in (fg, bg)])
    if rng.random() >= colour_accuracy:
        bg = rng.choice([c for c in COLOR_NAMES if c not in (fg, bg)])
    if rng.random() >= shape_accuracy:
        shape = rng.choice([s for s in TRAIN_SHAPES if s != shape])
    return Measurement(fg, bg, shape, 0.0, 0.0, 0.0)


def explorer_compute_ratio(cfg: BoundConfig, beta: float = DEFAULT_BETA) -> float:
    """The prompt explorer's compute / re-roll compute (see the module doc), over ``cfg.blind_trials`` trials."""
    np_rng = np.random.default_rng(cfg.seed)
    return _against_rerolling(cfg, lambda rng, prompt, target, shape_p: _explorer_cost(rng, np_rng, cfg, prompt, target,
                                                                                      shape_p, beta))


def feedback_bound(cfg: BoundConfig, fabric_ratio: float, keep: Keep | None = None) -> dict[str, Any]:
    """The oracle's compute_ratio with plain-cost rounds (seed steering alone) and FABRIC-cost rounds, the
    best blind refiner's, and (with ``keep``) one blind mechanism's."""
    out: dict[str, Any] = {"trials": cfg.trials, "cap_images": cfg.cap, "num_images": cfg.num_images,
                           "shape_accuracy": cfg.shape_accuracy, "fabric_ratio": fabric_ratio, "user": cfg.user,
                           "blind_trials": cfg.blind_trials, "caption_colour_accuracy": cfg.caption_colour_accuracy,
                           "caption_shape_accuracy": cfg.caption_shape_accuracy}
    for learns in ("liked", "all"):
        for name, cost in (("plain_rounds", 1.0), ("fabric_rounds", fabric_ratio)):
            out[f"oracle_knows_{learns}_{name}"] = round(oracle_compute_ratio(cfg, cost, learns), 4)
    out["control_knows_nothing_plain_rounds"] = round(oracle_compute_ratio(cfg, 1.0, "nothing"), 4)
    out["best_blind_plain_rounds"] = best_blind(cfg, 1.0)
    out["prompt_explorer_plain_rounds"] = round(explorer_compute_ratio(cfg), 4)
    if keep is not None:
        out["blind_given_keep"] = {"keep_fg_bg_shape": list(keep),
                                   "plain_rounds": round(blind_compute_ratio(cfg, keep, 1.0), 4),
                                   "fabric_rounds": round(blind_compute_ratio(cfg, keep, fabric_ratio), 4)}
    return out
