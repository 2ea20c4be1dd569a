"""The prompt explorer on the real philip-tiny, before it is built into the refiner (a research probe).

`philip eval feedback-bound` simulates a prompt explorer (:mod:`philip.evals.prompt_explorer`) with
attribute accuracies taken from `philip eval model`. This runs it with the model in the loop: the
trials, prompts, simulated user (`--user colour`), judge (`philip/tiny/measure.py`), 4-image rounds,
cap and settings of `philip eval feedback` (8 DPM-Solver++ steps, guidance 2, 64 px), in-process
rather than through the services, against blind re-rolling in the same run. Round 1 is the user's
prompt; from round 2 on each image is the full caption of a target the explorer asks for. Compute is
counted as the eval counts it: UNet image evaluations of every round up to and including the first
one holding a match (both methods draw the same 8 CFG-doubled steps per image, so it is 16 per image).
Prints one JSON line per trial and a summary last. ``models/README.md`` quotes it.

    .venv/bin/python scripts/prompt_explorer_probe.py [--trials 30] [--seed 0] [--cap 200]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import numpy as np
import torch

from philip.evals.feedback import FeedbackConfig, Target, choose_feedback, draw_trial
from philip.evals.prompt_explorer import PromptExplorer
from philip.models.pipelines import load_pipeline, make_scheduler
from philip.tiny.measure import Measurement, measure

CFG = FeedbackConfig()
EVALS_PER_IMAGE = CFG.steps * 2  # CFG doubles every step at guidance > 1


def _draw(pipe: Any, prompts: list[str], seeds: list[int]) -> list[Measurement]:
    with torch.inference_mode():
        images = pipe(prompt=prompts, num_inference_steps=CFG.steps, guidance_scale=CFG.guidance,
                      width=64, height=64, generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    return [measure(image) for image in images]


def _explore(pipe: Any, prompt: str, target: Target, rng: random.Random, cap: int) -> tuple[int, int]:
    """(images up to the first match or cap + 1, rounds drawn)."""
    explorer = PromptExplorer(prompt, np.random.default_rng(rng.randrange(2**32)))
    n, seen, rounds = CFG.num_images, 0, 0
    while seen < cap:
        asked = explorer.propose(n) if rounds else None
        prompts = [explorer.caption(a) for a in asked] if asked else [prompt] * n
        measured = _draw(pipe, prompts, [rng.randrange(2**40) for _ in range(n)])
        rounds += 1
        distances = [target.distance(m) for m in measured]
        if 0 in distances:
            return seen + distances.index(0) + 1, rounds
        seen += n
        if asked:
            closeness = [target.closeness(m, CFG.user) for m in measured]
            liked, disliked = choose_feedback(closeness, [str(i) for i in range(n)], 1)
            explorer.update(asked, int(liked[0]), int(disliked[0]) if disliked else None)
    return cap + 1, rounds


def _reroll(pipe: Any, prompt: str, target: Target, rng: random.Random, cap: int) -> tuple[int, int]:
    n, seen = CFG.num_images, 0
    while seen < cap:
        batch = min(2 * n, cap - seen)  # two rounds per call: faster, charged per round all the same
        measured = _draw(pipe, [prompt] * batch, [rng.randrange(2**40) for _ in range(batch)])
        distances = [target.distance(m) for m in measured]
        if 0 in distances:
            first = seen + distances.index(0) + 1
            return first, -(-first // n)
        seen += batch
    return cap + 1, cap // n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=int, default=CFG.cap)
    parser.add_argument("--model", default="models/philip-tiny")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.scheduler = make_scheduler(pipe, CFG.scheduler)
    rng = random.Random(args.seed)
    totals = {"explorer_rounds": 0, "reroll_rounds": 0, "explorer_matched": 0, "reroll_matched": 0}
    images = {"explorer": 0, "reroll": 0}
    t0 = time.monotonic()
    for trial in range(args.trials):
        prompt, target = draw_trial(rng)
        explored, explored_rounds = _explore(pipe, prompt, target, random.Random(rng.randrange(2**40)), args.cap)
        rerolled, rerolled_rounds = _reroll(pipe, prompt, target, random.Random(rng.randrange(2**40)), args.cap)
        totals["explorer_rounds"] += explored_rounds
        totals["reroll_rounds"] += rerolled_rounds
        totals["explorer_matched"] += explored <= args.cap
        totals["reroll_matched"] += rerolled <= args.cap
        images["explorer"] += explored
        images["reroll"] += rerolled
        print(json.dumps({"trial": trial, "prompt": prompt, "target": [target.fg, target.bg, target.shape],
                          "explorer_images_to_match": explored, "reroll_images_to_match": rerolled}), flush=True)
    n = args.trials
    print(json.dumps({
        "trials": n, "seed": args.seed, "cap_images": args.cap,
        "explorer_matched_within_cap": totals["explorer_matched"],
        "reroll_matched_within_cap": totals["reroll_matched"],
        "images_to_first_match_explorer": round(images["explorer"] / n, 2),
        "images_to_first_match_reroll": round(images["reroll"] / n, 2),
        "explorer_unet_evals": totals["explorer_rounds"] * CFG.num_images * EVALS_PER_IMAGE,
        "reroll_unet_evals": totals["reroll_rounds"] * CFG.num_images * EVALS_PER_IMAGE,
        "compute_ratio": round(totals["explorer_rounds"] / max(totals["reroll_rounds"], 1), 4),
        "seconds": round(time.monotonic() - t0, 1),
    }))


if __name__ == "__main__":
    main()
