"""`philip bench fabric-layers`: what each choice of FABRIC layers (PHILIP_FABRIC_LAYERS) costs.

On a model folder (by default the tiny random-weight SDXL folder, built in a temporary folder by
scripts/make_tiny_families.py): a FABRIC round with ``liked`` + ``disliked`` references vs a plain round through
the refiner's :class:`~services.refiner.rounds.RoundRunner` (medians of ``repeats``, timed round-robin after a
warm-up, in one process), and the bytes one reference's recorded activations take, per choice. Then the same
per-choice numbers for real SDXL at 1024 px and SD-1.5 at 512 px from their UNet configs on the meta device
(:mod:`philip.bench.fabric_shapes`).
Random weights measure time and memory only, never what an image looks like.
"""

from __future__ import annotations

import functools
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_families.py"


@dataclass(frozen=True)
class FabricLayersBenchConfig:
    model_dir: Path | None = None  # None: the tiny SDXL folder, built for the run
    choices: tuple[str, ...] = ("all", "up", "mid+up", "down+mid")
    images: int = 4
    steps: int = 8
    guidance: float = 5.0
    liked: int = 2
    disliked: int = 2
    repeats: int = 3
    real: bool = True  # also the meta-device numbers of real SDXL and SD-1.5


def tiny_sdxl(out_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny_families", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder: Path = module.make_family("sdxl", out_dir)
    return folder


def stored_per_reference(pipe: Any, liked: Any, disliked: Any, choice: str, size: int, guidance: float) -> int:
    """Bytes one reference's recorded activations hold under ``choice`` (one denoising step, in the pipe's dtype)."""
    from philip.models.conditioning import prompt_kwargs
    from services.refiner.fabric import FabricConditioner

    with FabricConditioner(pipe, liked=liked, disliked=disliked, layers=choice) as fabric:
        pipe(**prompt_kwargs(pipe, ["a circle"], [""]), num_inference_steps=1, guidance_scale=guidance,
             width=size, height=size, output_type="latent")
        rows = {p.recorded.shape[0] for p in fabric.processors.values() if p.recorded is not None}
        return fabric.stored_bytes // rows.pop()  # the references recorded (no dislikes without CFG)


def interleaved_medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of each run, timed round-robin after one warm-up each: a shared machine's load
    drifts, and its CPU time (every thread of this process) is the steadier measure there."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def _measure(cfg: FabricLayersBenchConfig, model_dir: Path) -> dict[str, Any]:
    from philip.models.families import family_of
    from philip.models.pipelines import load_pipeline, native_size
    from services.refiner.fabric_layers import chosen_layers, resolve_layers
    from services.refiner.rounds import Feedback, FeedbackImage, RoundParams, RoundRunner

    pipe = load_pipeline(model_dir)
    size = native_size(pipe)
    params = RoundParams(prompt="a circle", width=size, height=size, steps=cfg.steps, guidance=cfg.guidance,
                         scheduler="dpm++", num_images=cfg.images, seed=1)
    runners = {"plain": RoundRunner(pipe)} | {c: RoundRunner(pipe, fabric_layers=c) for c in cfg.choices}
    first = runners["plain"].run(params, Feedback())
    refs = [FeedbackImage(f"ref{i}", img.image, img.origin) for i, img in enumerate(first.images)]
    refs = (refs * (1 + (cfg.liked + cfg.disliked) // len(refs)))[: cfg.liked + cfg.disliked]
    feedback = Feedback(liked=tuple(refs[: cfg.liked]), disliked=tuple(refs[cfg.liked:]))
    fabric_params = replace(params, seed=1001)
    seconds = interleaved_medians(
        {name: functools.partial(runner.run, fabric_params, Feedback() if name == "plain" else feedback)
         for name, runner in runners.items()}, cfg.repeats)
    encode = functools.partial(runners["plain"].encode, params=params)
    liked, disliked = encode(feedback.liked), encode(feedback.disliked)
    for runner in runners.values():
        runner.close()
    (wall, cpu) = seconds.pop("plain")
    choices = {choice: {
        "layers": len(chosen_layers(pipe.unet.attn_processors, choice)),
        "fabric_round_s": round(seconds[choice][0], 4), "fabric_ratio": round(seconds[choice][0] / wall, 3),
        "fabric_cpu_ratio": round(seconds[choice][1] / cpu, 3),
        "stored_bytes_per_reference": stored_per_reference(pipe, liked, disliked, choice, size, cfg.guidance)}
        for choice in cfg.choices}
    return {"model_dir": str(model_dir), "family": family_of(pipe).name, "size": size, "dtype": str(pipe.unet.dtype),
            "default": resolve_layers("", pipe), "plain_round_s": round(wall, 4), "plain_round_cpu_s": round(cpu, 4),
            "choices": choices}


def run_fabric_layers_bench(cfg: FabricLayersBenchConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = cfg.model_dir or tiny_sdxl(Path(tmp))
        result = {"images": cfg.images, "steps": cfg.steps, "guidance": cfg.guidance, "liked": cfg.liked,
                  "disliked": cfg.disliked, "repeats": cfg.repeats, **_measure(cfg, model_dir)}
    if cfg.real:
        from philip.bench.fabric_shapes import real_unet_report

        result["real"] = real_unet_report(cfg.images, cfg.liked, cfg.disliked)
    return result
