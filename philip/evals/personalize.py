"""Personalization evaluation: teach philip-tiny the star it never saw, then check it draws it on demand.

Five renders of the held-out star in one colour (on varied backgrounds) are the references. After
training, "a {token} on a {colour} background" is generated for every other colour, with the
adapter and without it (same seeds), and each image is judged by pixels (``philip.tiny.measure``):
the subject is hit when the judge sees a star in the reference colour; the prompt is followed
when the background is the requested colour.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from philip.tiny.dataset import COLOR_NAMES, HELDOUT_SHAPE, ShapeSpec, render
from philip.tiny.measure import measure

# Green is the palette colour farthest from its nearest neighbour after white/black, so a slightly
# off-colour render still reads as green (yellow sits 66 RGB units from orange).
SUBJECT_COLOR = "green"
# References on light, dark and saturated backgrounds, so the adapter learns the subject, not a backdrop.
REFERENCE_BACKGROUNDS = ("white", "blue", "black", "red", "yellow", "purple", "orange")
# The subject is a big star: philip-tiny's VAE (16x16 latents) keeps the points of stars this size
# (21/21 round trips judged star at 0.75 of the side) but blurs smaller ones (8/21 at 0.55).
SUBJECT_SIZE = 0.80
REFERENCE_SEED = 4_242


@dataclass(frozen=True, slots=True)
class PersonalizeConfig:
    token: str = "sks"
    class_word: str = "shape"
    method: str = "lora"
    steps: int = 0  # 0 = the method's default
    references: int = 5
    seeds_per_colour: int = 6
    colour: str = SUBJECT_COLOR
    guidance: float = 5.0
    inference_steps: int = 8


def reference_images(n: int = 5, colour: str = SUBJECT_COLOR, seed: int = REFERENCE_SEED) -> list[Image.Image]:
    """n renders of the star in ``colour`` on backgrounds taken in turn from ``REFERENCE_BACKGROUNDS``."""
    rng = np.random.default_rng(seed)
    backgrounds = [c for c in REFERENCE_BACKGROUNDS if c != colour]
    half = SUBJECT_SIZE / 2
    def centre() -> float:
        return float(rng.uniform(half + 0.02, 1 - half - 0.02))

    specs = [ShapeSpec(HELDOUT_SHAPE, colour, backgrounds[i % len(backgrounds)], SUBJECT_SIZE, centre(), centre())
             for i in range(n)]
    return [render(spec) for spec in specs]


def eval_prompts(token: str, colour: str = SUBJECT_COLOR) -> list[tuple[str, str]]:
    """(prompt, background colour) for every colour but the subject's."""
    return [(f"a {token} on a {bg} background", bg) for bg in COLOR_NAMES if bg != colour]


def score(images_with: list[Image.Image], images_without: list[Image.Image], backgrounds: list[str],
          colour: str = SUBJECT_COLOR) -> dict[str, float]:
    def subject(img: Image.Image) -> bool:
        return measure(img).matches(fg=colour, shape=HELDOUT_SHAPE)

    n = len(backgrounds)
    return {
        "subject_rate_with": sum(map(subject, images_with)) / n,
        "subject_rate_without": sum(map(subject, images_without)) / n,
        "bg_follows_prompt": sum(measure(img).bg == bg for img, bg in zip(images_with, backgrounds, strict=True)) / n,
    }


# (prompt, seed, adapter_ids) batches -> images; the evaluation runs it through a real generator.
GenerateFn = Callable[[list[str], list[int], tuple[str, ...]], Awaitable[list[Image.Image]]]
TrainFn = Callable[[list[Image.Image], PersonalizeConfig], Awaitable[str]]


async def evaluate_personalization(config: PersonalizeConfig, train: TrainFn, generate: GenerateFn,
                                   save_dir: Path | None = None) -> dict[str, Any]:
    """Train an adapter through ``train`` (returns its id), then judge generations with and without it."""
    refs = reference_images(config.references, config.colour)
    started = time.monotonic()
    adapter_id = await train(refs, config)
    train_s = time.monotonic() - started
    pairs = [(prompt, bg) for prompt, bg in eval_prompts(config.token, config.colour)
             for _ in range(config.seeds_per_colour)]
    prompts = [p for p, _ in pairs]
    seeds = [10_000 + i for i in range(len(pairs))]
    with_images = await generate(prompts, seeds, (adapter_id,))
    without_images = await generate(prompts, seeds, ())
    result = score(with_images, without_images, [bg for _, bg in pairs], config.colour)
    if save_dir is not None:
        from philip.images import contact_sheet

        save_dir.mkdir(parents=True, exist_ok=True)
        contact_sheet(refs, 5).save(save_dir / "personalize_refs.png")
        contact_sheet(with_images, config.seeds_per_colour).save(save_dir / "personalize_with.png")
        contact_sheet(without_images, config.seeds_per_colour).save(save_dir / "personalize_without.png")
    return {**result, "train_s": round(train_s, 1), "method": config.method, "n": len(pairs), "colour": config.colour,
            "adapter_id": adapter_id}


async def evaluate_in_process(config: PersonalizeConfig, model_dir: str | Path = "models/philip-tiny",
                              save_dir: Path | None = None,
                              on_progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """The evaluation through the personalizer's own job path (store queue, worker, adapter files) on
    the embedded store; generation through the generator's adapter switch."""
    import asyncio
    import tempfile

    from philip.images import png_bytes
    from philip.models.adapters import AdapterSwitch, load_tokenizer
    from philip.models.pipelines import load_pipeline, make_scheduler
    from philip.store import MemoryStore
    from philip.tiny.evaluate import generate as generate_batch
    from services.personalizer.records import StepDone
    from services.personalizer.requests import AdapterRequest
    from services.personalizer.service import Personalizer
    from services.personalizer.worker import TrainingWorker, WorkerConfig

    with tempfile.TemporaryDirectory(prefix="philip-eval-adapters-") as adapters_dir:
        async with MemoryStore() as store:
            personalizer = Personalizer(store, adapters_dir, load_tokenizer(model_dir))
            worker = TrainingWorker(personalizer, WorkerConfig(model_dir=str(model_dir)), "eval")

            async def train(refs: list[Image.Image], cfg: PersonalizeConfig) -> str:
                job = await personalizer.create(AdapterRequest(
                    tuple(png_bytes(r) for r in refs), cfg.token, cfg.class_word, cfg.method, cfg.steps))
                stop = asyncio.Event()
                running = asyncio.create_task(worker.run(stop))
                try:
                    async for event in personalizer.watch(job.job_id):
                        if on_progress is not None and isinstance(event, StepDone):
                            on_progress(event.step, event.total, event.loss)
                finally:
                    stop.set()
                    await running
                done = await personalizer.get_job(job.job_id)
                if done.state != "succeeded":
                    raise RuntimeError(f"training job {done.job_id} ended {done.state}: {done.error}")
                return done.adapter_id

            pipe = load_pipeline(model_dir)
            pipe.scheduler = make_scheduler(pipe, "dpm++")
            switch = AdapterSwitch(pipe, adapters_dir)

            async def generate(prompts: list[str], seeds: list[int], ids: tuple[str, ...]) -> list[Image.Image]:
                def work() -> list[Image.Image]:
                    switch.activate(ids)
                    return generate_batch(pipe, prompts, seeds, config.inference_steps, config.guidance)

                return await asyncio.to_thread(work)

            return await evaluate_personalization(config, train, generate, save_dir)
