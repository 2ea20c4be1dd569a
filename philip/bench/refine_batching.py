"""`philip bench refine`'s batching part: 8 sessions' rounds through the refiner's queue vs one batched call.

For plain, explored and FABRIC rounds (different seeds, prompts and references per session), three timings
of the same rounds on one pipeline, medians of ``repeats`` after a warm-up:
* ``batched_call_s``: one :meth:`RoundRunner.run_batch` of all of them (the bare batched pipeline call);
* ``queued_s``: the sessions' rounds submitted at once to a :class:`RoundQueue` (what the refiner does);
* ``one_at_a_time_s``: each round alone, one after another (the refiner before batching).
``refine_batching`` = batched_call_s / queued_s (goal >= 0.9: the queue costs little over the bare call).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

KINDS = ("plain", "explored", "fabric")


def _interleaved_medians(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median seconds of each function, run in turn (a, b, c, a, b, c, ...) so that drifts of the machine's speed
    fall on all of them alike; one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _works(kind: str, sessions: int, params: Any, refs: list[Any]) -> list[Any]:
    from philip.exploration import RoundChoice
    from services.refiner.batch_round import RoundWork
    from services.refiner.rounds import Feedback

    history = (RoundChoice(("a red circle on a blue background", "a green circle on a white background"), 0, 1),)
    works = []
    for s in range(sessions):
        p = dataclasses.replace(params, seed=1000 * (s + 1))
        if kind == "plain":
            feedback = Feedback()
        elif kind == "explored":
            feedback = Feedback(explore=1.0, history=history)
        else:
            feedback = Feedback(liked=(refs[s % len(refs)],), disliked=(refs[(s + 1) % len(refs)],))
        works.append(RoundWork(p, feedback))
    return works


def batching_bench(runner: Any, params: Any, refs: list[Any], *, sessions: int = 8, repeats: int = 3,
                   window_ms: int = 15) -> dict[str, Any]:
    from services.refiner.batching import RoundQueue

    out: dict[str, Any] = {"sessions": sessions, "images_per_round": params.num_images}
    ratios, speedups = {}, {}
    for kind in KINDS:
        works = _works(kind, sessions, params, refs)
        images = sessions * params.num_images

        async def queued(works: list[Any] = works, images: int = images) -> None:
            queue = RoundQueue(runner, max_queue=sessions, max_batch=images, batch_window_ms=window_ms)
            fresh = [dataclasses.replace(w, cancel=type(w.cancel)()) for w in works]
            await asyncio.gather(*(queue.run(w) for w in fresh))
            await queue.close()

        def batched(works: list[Any] = works) -> None:
            runner.run_batch(works)

        def alone(works: list[Any] = works) -> None:
            for w in works:
                runner.run(w.params, w.feedback)

        batched_s, queued_s, alone_s = _interleaved_medians([batched, lambda: asyncio.run(queued()), alone], repeats)
        out[kind] = {"batched_call_s": round(batched_s, 3), "queued_s": round(queued_s, 3),
                     "one_at_a_time_s": round(alone_s, 3)}
        ratios[kind] = round(batched_s / queued_s, 3)
        speedups[kind] = round(alone_s / queued_s, 3)
    out["refine_batching"] = ratios  # goal >= 0.9
    out["batched_speedup_over_one_at_a_time"] = speedups
    return out
