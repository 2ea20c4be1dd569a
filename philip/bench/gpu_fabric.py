"""FABRIC's cost in ``philip bench gpu``: a feedback round with references (1 liked + 1 disliked by default) over a
plain round of the same size, through the refiner's own :class:`~services.refiner.rounds.RoundRunner`, as
``philip bench refine`` measures it; on a GPU also each round's peak memory (what the references' stored
self-attention inputs add)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from philip.bench.gpu_runs import median_of, peak_memory_mib, reset_peak_memory, synchronize

if TYPE_CHECKING:
    from philip.bench.gpu_runs import ModelUnderBench


def fabric_ratio(bench: ModelUnderBench) -> dict[str, Any]:
    """``ratio`` = FABRIC round / plain round (medians), or ``skipped`` with the reason for a family without it."""
    from philip.models.families import family_of
    from services.refiner.rounds import Feedback, FeedbackImage, RoundParams, RoundRunner

    family = family_of(bench.pipe)
    if not family.fabric:
        return {"skipped": f"{family.label} has no UNet self-attention (attn1) for FABRIC: feedback acts through "
                           "seed steering and prompt exploration"}
    liked, disliked = bench.cfg.fabric_refs
    params = RoundParams(prompt=bench.cfg.prompt, width=bench.size, height=bench.size, steps=bench.cfg.steps,
                         guidance=bench.guidance, scheduler=bench.scheduler, num_images=liked + disliked, seed=1)
    runner = RoundRunner(bench.pipe)
    try:
        first = runner.run(params, Feedback())
        refs = [FeedbackImage(f"ref{i}", image.image, image.origin) for i, image in enumerate(first.images)]
        feedback = Feedback(liked=tuple(refs[:liked]), disliked=tuple(refs[liked:]))
        later = replace(params, seed=1001)
        plain = _timed_round(bench, lambda: runner.run(later, Feedback()))
        fabric = _timed_round(bench, lambda: runner.run(later, feedback))
    finally:
        runner.close()
    result: dict[str, Any] = {"references": liked + disliked, "images": params.num_images,
                              "plain_s": round(plain["s"], 3), "fabric_s": round(fabric["s"], 3),
                              "ratio": round(fabric["s"] / plain["s"], 3)}
    if bench.device == "cuda":
        result.update(plain_peak_mib=plain["mib"], fabric_peak_mib=fabric["mib"])
    return result


def _timed_round(bench: ModelUnderBench, round_: Any) -> dict[str, float]:
    def once() -> dict[str, float]:
        reset_peak_memory(bench.device)
        synchronize(bench.device)
        t0 = time.perf_counter()
        round_()
        synchronize(bench.device)
        return {"s": time.perf_counter() - t0, "mib": peak_memory_mib(bench.device)["mib"]}

    return median_of(once, bench.cfg.repeats)
