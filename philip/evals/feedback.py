"""`philip eval feedback`: FABRIC's evaluation protocol on philip-tiny, through the real services.

Per trial a hidden target (foreground, background and shape) is drawn and the simulated user gets
an underspecified prompt ("a circle": the colours are hidden; "a shape": all three are). Every
image is judged with :mod:`philip.tiny.measure`; an image *matches* when all three attributes do.

* feedback: a Session; after each round the user likes the image(s) closest to the target and
  dislikes the farthest (if it is farther), for ``rounds`` rounds;
* baseline: the same number of rounds with no feedback (fresh seeds each round, what the gateway
  does when nothing was liked or disliked);
* images to first match: feedback rounds go on past ``rounds`` until the first match or ``cap``
  images; blind re-rolling draws fresh batches of the prompt until a match, with the same cap.

Compute is counted in UNet image evaluations as the services report them (reference passes
included). The match rate of a round is the fraction of its images that match, over all trials.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from philip.clients.session import SessionClient
from philip.feedback_weights import parse_weight_options as parse_weight_options  # re-exported: the CLI and tests
from philip.feedback_weights import weights_from_pb
from philip.tiny.dataset import COLOR_NAMES, COLORS, TRAIN_SHAPES
from philip.tiny.measure import Measurement, measure, target_distance
from philip.v1 import common_pb2, gateway_pb2_grpc, refiner_pb2

PROMPTS = (*(f"a {shape}" for shape in TRAIN_SHAPES), "a shape")


@dataclass(frozen=True)
class Target:
    fg: str
    bg: str
    shape: str

    def distance(self, m: Measurement) -> int:
        return target_distance(m, self.fg, self.bg, self.shape)

    def closeness(self, m: Measurement, user: str) -> tuple[int, float]:
        """How far ``m`` looks from the target to the simulated ``user`` (smaller is closer; see USERS)."""
        misses = self.distance(m)
        if user == "misses":
            return misses, 0.0
        return misses, _colour_gap(m.fg, self.fg) + _colour_gap(m.bg, self.bg)


# The simulated users. "misses": closeness is the number of target attributes missed, ties broken by
# position (the user cannot tell a red from a blue when the target is orange). "colour": the same, ties
# broken by how far the drawn colours are from the target's in RGB, as a person (and FABRIC's CLIP-
# similarity user) would rank them: an orange-ish miss is closer to an orange target than a blue one.
USERS = ("colour", "misses")
_MAX_GAP = math.dist((0, 0, 0), (255, 255, 255))


def _colour_gap(drawn: str, wanted: str) -> float:
    """RGB distance between two palette colours, 0-1; a colour the judge could not name counts as farthest."""
    if drawn not in COLORS:
        return 1.0
    return math.dist(COLORS[drawn], COLORS[wanted]) / _MAX_GAP


@dataclass(frozen=True)
class FeedbackConfig:
    trials: int = 30
    rounds: int = 3
    num_images: int = 4
    steps: int = 8
    # philip-tiny draws the named shape of "a circle"/"a square"/"a triangle" far more often at 2 than at 5
    # (measured 0.88/0.56/0.54 vs 0.48/0.31/0.38; models/README.md), and the loop can only build on what it draws.
    guidance: float = 2.0
    scheduler: str = "dpm++"
    cap: int = 200  # images, for images-to-first-match (both methods)
    likes_per_round: int = 1
    user: str = "colour"  # see USERS
    seed: int = 0
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.user not in USERS:
            raise ValueError(f"user {self.user!r} is not one of {', '.join(USERS)}")


ATTRIBUTES = ("fg", "bg", "shape")
# Tallied per attribute and for the colour pair: a mechanism that keeps fg and bg only together cannot
# build on a like that has one colour right (`philip eval feedback-bound` shows what that costs).
AGREEMENTS = (*ATTRIBUTES, "both_colours")


def _tally() -> dict[str, list[int]]:
    return {a: [0, 0] for a in AGREEMENTS}  # attribute -> [agreeing pairs, pairs]


@dataclass
class TrialResult:
    prompt: str
    target: Target
    feedback_matches: list[float]  # per round: fraction of images that match
    baseline_matches: list[float]
    feedback_distance: list[float]  # per round: mean number of target attributes missed (0-3)
    baseline_distance: list[float]
    feedback_images_to_match: int  # cap + 1 when never matched within the cap
    reroll_images_to_match: int
    feedback_compute: int  # UNet image evaluations until the first match (or the cap)
    reroll_compute: int
    # What feedback can build on: how often a steered image keeps its liked parent's attribute, against how
    # often two unrelated images of one re-rolled round agree on it; and which attributes the liked images
    # had right (the user's choice is all the refiner learns).
    inherited: dict[str, list[int]] = field(default_factory=_tally)
    unrelated: dict[str, list[int]] = field(default_factory=_tally)
    liked_right: dict[str, list[int]] = field(default_factory=_tally)
    weights: dict[str, float] = field(default_factory=dict)  # the feedback session's effective weights


@dataclass
class _Session:
    rates: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    images_to_match: int = 0
    compute: int = 0
    pairs: dict[str, list[int]] = field(default_factory=_tally)  # parent-child (feedback) or unrelated (re-roll)
    liked_right: dict[str, list[int]] = field(default_factory=_tally)
    weights: dict[str, float] = field(default_factory=dict)


def draw_trial(rng: random.Random) -> tuple[str, Target]:
    prompt = rng.choice(PROMPTS)
    shape = prompt.removeprefix("a ") if prompt != "a shape" else rng.choice(TRAIN_SHAPES)
    fg, bg = rng.sample(COLOR_NAMES, 2)
    return prompt, Target(fg, bg, shape)


def _measure(images: list[refiner_pb2.RoundImage]) -> list[Measurement]:
    return [measure(Image.open(io.BytesIO(i.image.png))) for i in images]


def _count_agreement(tally: dict[str, list[int]], a: Measurement, b: Measurement | Target) -> None:
    same = {name: getattr(a, name) == getattr(b, name) for name in ATTRIBUTES}
    same["both_colours"] = same["fg"] and same["bg"]
    for name, agrees in same.items():
        tally[name][0] += agrees
        tally[name][1] += 1


def choose_feedback(distances: Sequence[Any], ids: list[str], likes: int) -> tuple[list[str], list[str]]:
    """The simulated user: like the closest ``likes`` images, dislike the farthest if it is farther.

    ``distances`` are any comparable closeness values (ints, or tuples compared in order); ties keep position.
    """
    order = sorted(range(len(ids)), key=lambda i: distances[i])
    liked = [ids[i] for i in order[:likes]]
    worst = order[-1]
    disliked = [ids[worst]] if distances[worst] > distances[order[0]] and ids[worst] not in liked else []
    return liked, disliked


def _params(cfg: FeedbackConfig, prompt: str, seed: int, num_images: int) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(prompt=prompt, num_images=num_images, steps=cfg.steps, guidance=cfg.guidance,
                                       scheduler=cfg.scheduler, seed=seed, width=64, height=64)


async def _run_session(stub: gateway_pb2_grpc.GatewayStub, cfg: FeedbackConfig, prompt: str, target: Target,
                       seed: int, *, with_feedback: bool) -> _Session:
    """Rounds until ``cfg.rounds`` are done and (a match was seen or ``cfg.cap`` images were drawn).

    Keeps per-round match rates and mean distances of the first ``cfg.rounds`` rounds, images up to and including
    the first match (cap + 1 if none) and UNet evaluations of the rounds up to that match (or all).
    """
    if with_feedback:  # no weights given: the served model's defaults, what any client without flags gets
        weights = refiner_pb2.FeedbackWeights(**cfg.weights) if cfg.weights else None
    else:  # blind re-rolling: fresh batches of the person's prompt, never an explored one
        weights = refiner_pb2.FeedbackWeights(explore=0.0)
    session = await SessionClient.start(stub, _params(cfg, prompt, seed, cfg.num_images), weights=weights)
    assert session.snapshot is not None
    out = _Session(weights=weights_from_pb(session.snapshot.weights))
    measured: dict[str, Measurement] = {}
    seen, first_match = 0, 0
    try:
        current = await session.next_round()
        while True:
            ms = _measure(current.images)
            distances = [target.distance(m) for m in ms]
            out.rates.append(sum(d == 0 for d in distances) / len(distances))
            out.distances.append(sum(distances) / len(distances))
            for image, m in zip(current.images, ms, strict=True):
                if image.steered_from in measured:
                    _count_agreement(out.pairs, measured[image.steered_from], m)
                measured[image.image.id] = m
            if not with_feedback:
                for i, a in enumerate(ms):
                    for b in ms[i + 1:]:
                        _count_agreement(out.pairs, a, b)
            if not first_match:  # a round's images arrive together: the matching round is charged in full
                out.compute += current.compute.main_image_evals + current.compute.reference_image_evals
                if 0 in distances:
                    first_match = seen + distances.index(0) + 1
            seen += len(distances)
            if len(out.rates) >= cfg.rounds and (first_match or seen >= cfg.cap):
                break
            if with_feedback:
                closeness = [target.closeness(m, cfg.user) for m in ms]
                liked, disliked = choose_feedback(closeness, [i.image.id for i in current.images],
                                                  cfg.likes_per_round)
                for image_id in liked:
                    _count_agreement(out.liked_right, measured[image_id], target)
            else:
                liked, disliked = [], []  # no feedback: the next round is a fresh batch
            current = await session.feedback(liked, disliked)
        out.rates, out.distances = out.rates[: cfg.rounds], out.distances[: cfg.rounds]
        out.images_to_match = first_match or cfg.cap + 1
        return out
    finally:
        await session.close()


async def run_trials(stub: gateway_pb2_grpc.GatewayStub, cfg: FeedbackConfig,
                     on_trial: Callable[[int, TrialResult], None] | None = None) -> list[TrialResult]:
    rng = random.Random(cfg.seed)
    results = []
    for t in range(cfg.trials):
        prompt, target = draw_trial(rng)
        seed = rng.randrange(2**40)
        fb = await _run_session(stub, cfg, prompt, target, seed, with_feedback=True)
        base = await _run_session(stub, cfg, prompt, target, seed + 7_919, with_feedback=False)
        result = TrialResult(prompt, target, fb.rates, base.rates, fb.distances, base.distances,
                             fb.images_to_match, base.images_to_match, fb.compute, base.compute,
                             inherited=fb.pairs, unrelated=base.pairs, liked_right=fb.liked_right,
                             weights=fb.weights)
        results.append(result)
        if on_trial is not None:
            on_trial(t, result)
    return results


def trial_record(index: int, result: TrialResult) -> dict[str, Any]:
    """One trial as a JSON-ready dict (a line of ``--trials-log``): long runs leave what they measured."""
    return {"trial": index, **dataclasses.asdict(result)}  # asdict turns the nested Target into a dict too


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (z = 1.96) Wilson score interval of a rate of ``hits`` in ``n``; sound near 0, unlike p +- z*se."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(hits: int, n: int) -> list[float]:
    return [round(x, 4) for x in wilson_interval(hits, n)]


def _pooled(tallies: list[dict[str, list[int]]]) -> dict[str, float | None]:
    """Agreeing pairs / pairs per attribute over all trials (None where no pair was seen)."""
    sums = {a: (sum(t[a][0] for t in tallies), sum(t[a][1] for t in tallies)) for a in AGREEMENTS}
    return {a: round(k / n, 3) if n else None for a, (k, n) in sums.items()}


def summarize(results: list[TrialResult], cfg: FeedbackConfig, seconds: float) -> dict[str, Any]:
    n = len(results)
    by_round = [sum(r.feedback_matches[k] for r in results) / n for k in range(cfg.rounds)]
    baseline_by_round = [sum(r.baseline_matches[k] for r in results) / n for k in range(cfg.rounds)]
    # Matching images counted back from the per-trial rates (every round has cfg.num_images images).
    round_images = n * cfg.num_images
    hits_by_round = [round(x * round_images) for x in by_round]
    baseline_hits = round(sum(baseline_by_round) * round_images)
    baseline_rate = sum(baseline_by_round) / cfg.rounds
    fb_compute = sum(r.feedback_compute for r in results)
    rr_compute = sum(r.reroll_compute for r in results)
    return {
        "prompts": sorted({r.prompt for r in results}),
        "rounds": cfg.rounds,
        "num_images": cfg.num_images,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "cap_images": cfg.cap,
        "likes_per_round": cfg.likes_per_round,
        "user": cfg.user,
        "weights": cfg.weights,  # as given (empty: the served model's defaults)
        "effective_weights": results[0].weights if results else {},
        "baseline_match_rate_by_round": [round(x, 4) for x in baseline_by_round],
        # Attributes of the target missed per image (0-3), mean per round: does feedback move toward it?
        "distance_by_round": [round(sum(r.feedback_distance[k] for r in results) / n, 3) for k in range(cfg.rounds)],
        "baseline_distance_by_round": [round(sum(r.baseline_distance[k] for r in results) / n, 3)
                                       for k in range(cfg.rounds)],
        # Counts and 95 % Wilson intervals: at rates near 1 % a few dozen trials cannot tell methods apart.
        "matches_by_round": hits_by_round,
        "baseline_matches": baseline_hits,
        "last_round_rate_interval": _interval(hits_by_round[-1], round_images),
        "baseline_rate_interval": _interval(baseline_hits, round_images * cfg.rounds),
        "last_round_over_baseline": round(by_round[-1] / baseline_rate, 3) if baseline_rate else None,
        # Can feedback build on an attribute? Steered images keep their liked parent's value this often, where
        # two unrelated images of a re-rolled round agree this often by chance; and how often liked images had
        # each attribute right.
        "parent_child_agreement": _pooled([r.inherited for r in results]),
        "unrelated_agreement": _pooled([r.unrelated for r in results]),
        "liked_images_right": _pooled([r.liked_right for r in results]),
        "feedback_matched_within_cap": sum(r.feedback_images_to_match <= cfg.cap for r in results),
        "reroll_matched_within_cap": sum(r.reroll_images_to_match <= cfg.cap for r in results),
        "feedback_unet_evals": fb_compute,
        "reroll_unet_evals": rr_compute,
        "seconds": round(seconds, 1),
        # The fields, last:
        "match_rate_by_round": [round(x, 4) for x in by_round],
        "baseline_match_rate": round(baseline_rate, 4),
        "images_to_first_match_feedback": round(sum(r.feedback_images_to_match for r in results) / n, 2),
        "images_to_first_match_reroll": round(sum(r.reroll_images_to_match for r in results) / n, 2),
        "compute_ratio": round(fb_compute / max(rr_compute, 1), 4),
        "trials": n,
    }


async def evaluate_feedback(cfg: FeedbackConfig, gateway: str | None = None, *,
                            settings: Any = None,
                            on_trial: Callable[[int, TrialResult], None] | None = None) -> dict[str, Any]:
    """Run the protocol against ``gateway``, or against in-process services (``serve all``)."""
    from philip.clients.embedded import gateway_stub

    t0 = time.monotonic()
    async with gateway_stub(gateway, settings=settings) as stub:
        results = await run_trials(stub, cfg, on_trial)
    return summarize(results, cfg, time.monotonic() - t0)

