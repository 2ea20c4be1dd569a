"""`philip bench refine`: what feedback costs. A FABRIC round vs a plain round, and the x4 upscale.

Both rounds run on the same pipeline through :class:`~services.refiner.rounds.RoundRunner` (the
refiner's own code path), same prompt, size, steps and guidance; the FABRIC round conditions on
``liked`` + ``disliked`` references taken from the plain round. Medians of ``repeats`` runs after
one warm-up each, measured in one process so the ratio is fair.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from philip.images import png_bytes


@dataclass(frozen=True)
class RefineBenchConfig:
    model_dir: Path = Path("models/philip-tiny")
    upscaler_path: Path = Path("models/philip-tiny-x4.onnx")
    prompt: str = "a circle"
    images: int = 4
    steps: int = 8
    guidance: float = 5.0
    liked: int = 1
    disliked: int = 1
    repeats: int = 5
    sessions: int = 8  # concurrent sessions of the batching part
    batching: bool = True


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_refine_bench(cfg: RefineBenchConfig) -> dict[str, Any]:
    from philip.models.pipelines import load_pipeline, native_size
    from philip.models.upscaler import OnnxUpscaler
    from philip.tiny.dataset import prompt_vocabulary
    from services.refiner.explore import PromptVocabulary
    from services.refiner.rounds import Feedback, FeedbackImage, RoundParams, RoundRunner

    pipe = load_pipeline(cfg.model_dir)
    runner = RoundRunner(pipe, vocabulary=PromptVocabulary.from_json(prompt_vocabulary()))
    size = native_size(pipe)
    params = RoundParams(prompt=cfg.prompt, width=size, height=size, steps=cfg.steps, guidance=cfg.guidance,
                         scheduler="dpm++", num_images=cfg.images, seed=1)
    first = runner.run(params, Feedback())
    refs = [FeedbackImage(f"ref{i}", img.image, img.origin) for i, img in enumerate(first.images)]
    feedback = Feedback(liked=tuple(refs[: cfg.liked]), disliked=tuple(refs[cfg.liked : cfg.liked + cfg.disliked]))
    fabric_params = replace(params, seed=1001)
    plain_s = _median_s(lambda: runner.run(fabric_params, Feedback()), cfg.repeats)
    fabric_s = _median_s(lambda: runner.run(fabric_params, feedback), cfg.repeats)
    plain = runner.run(fabric_params, Feedback()).compute
    fabric = runner.run(fabric_params, feedback).compute
    batching = {}
    if cfg.batching:
        from philip.bench.refine_batching import batching_bench

        batching = batching_bench(runner, params, refs, sessions=cfg.sessions, repeats=cfg.repeats)
    runner.close()

    upscaler = OnnxUpscaler(cfg.upscaler_path)
    image = first.images[0].image
    upscale_s = _median_s(lambda: png_bytes(upscaler.upscale(image)), cfg.repeats)
    return {
        "model_dir": str(cfg.model_dir),
        "images": cfg.images,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "liked": cfg.liked,
        "disliked": cfg.disliked,
        "plain_round_s": round(plain_s, 4),
        "fabric_round_s": round(fabric_s, 4),
        "plain_unet_image_evals": plain.total_image_evals,
        "fabric_unet_image_evals": fabric.total_image_evals,
        "fabric_eval_ratio": round(fabric.total_image_evals / plain.total_image_evals, 3),
        "upscale_input": f"{image.width}x{image.height}",
        "upscale_s": round(upscale_s, 4),
        "fabric_ratio": round(fabric_s / plain_s, 3),
        **({"batching": batching, "refine_batching": batching["refine_batching"]} if batching else {}),
    }
