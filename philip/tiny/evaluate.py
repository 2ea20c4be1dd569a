"""`philip eval model|upscaler` and `philip bench model`: measured, never asserted."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from philip.images import contact_sheet
from philip.models.pipelines import load_pipeline, make_scheduler
from philip.models.upscaler import OnnxUpscaler
from philip.tiny.dataset import COLOR_NAMES, EVAL_SEED, TRAIN_SHAPES, UPSCALER_EVAL_SEED, ShapesDataset, full_caption
from philip.tiny.measure import measure
from philip.tiny.upscaler_train import pair


def eval_captions(n: int, seed: int = EVAL_SEED) -> list[tuple[str, str, str]]:
    """n (fg, shape, bg) triples: every combination once, shuffled, then repeated as needed."""
    combos = [(fg, sh, bg) for sh in TRAIN_SHAPES for fg in COLOR_NAMES for bg in COLOR_NAMES if fg != bg]
    order = np.random.default_rng(seed).permutation(len(combos))
    return [combos[order[i % len(combos)]] for i in range(n)]


def generate(pipe: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             batch: int = 8) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch):
        ps, ss = prompts[start : start + batch], seeds[start : start + batch]
        gens = [torch.Generator().manual_seed(s) for s in ss]
        out = pipe(ps, num_inference_steps=steps, guidance_scale=guidance, generator=gens, height=64, width=64)
        images.extend(out.images)
    return images


def evaluate_model(model_dir: str | Path = "models/philip-tiny", n: int = 168, steps: int = 8,
                   guidance: float = 5.0, scheduler: str = "dpm++", seed: int = EVAL_SEED,
                   save_dir: Path | None = None) -> dict[str, Any]:
    """Generate from held-out seeds for full captions and judge every image by pixels."""
    pipe = load_pipeline(model_dir)
    pipe.scheduler = make_scheduler(pipe, scheduler)
    triples = eval_captions(n, seed)
    prompts = [full_caption(fg, sh, bg) for fg, sh, bg in triples]
    images = generate(pipe, prompts, [seed + i for i in range(n)], steps, guidance)
    hits = {"fg": 0, "bg": 0, "shape": 0}
    for (fg, sh, bg), img in zip(triples, images, strict=True):
        m = measure(img)
        hits["fg"] += m.fg == fg
        hits["bg"] += m.bg == bg
        hits["shape"] += m.shape == sh
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        contact_sheet(images[:64], 8).save(save_dir / "eval_model.png")
    return {
        "fg_color_acc": hits["fg"] / n, "bg_color_acc": hits["bg"] / n, "shape_acc": hits["shape"] / n,
        "n": n, "steps": steps, "guidance": guidance, "scheduler": scheduler,
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def evaluate_upscaler(path: str | Path = "models/philip-tiny-x4.onnx", n: int = 64,
                      seed: int = UPSCALER_EVAL_SEED) -> dict[str, Any]:
    """PSNR of the model vs bicubic on held-out 256 px renders downsampled to 64."""
    up = OnnxUpscaler(path)
    ds = ShapesDataset(seed)
    model_scores, bicubic_scores = [], []
    for i in range(n):
        lo, hi = pair(ds, i)
        lo_img = Image.fromarray((lo * 255 + 0.5).astype(np.uint8))
        model_scores.append(psnr(np.asarray(up.upscale(lo_img), np.float32) / 255, hi))
        bic = lo_img.resize((256, 256), Image.Resampling.BICUBIC)
        bicubic_scores.append(psnr(np.asarray(bic, np.float32) / 255, hi))
    return {"psnr_model": float(np.mean(model_scores)), "psnr_bicubic": float(np.mean(bicubic_scores)),
            "n": n, "scale": up.scale}


def bench_model(model_dir: str | Path = "models/philip-tiny", images: int = 8, steps: int = 8,
                guidance: float = 5.0, repeats: int = 3) -> dict[str, Any]:
    """Images per second for one batch through the bare torch pipeline (CFG on)."""
    pipe = load_pipeline(model_dir)
    prompts = ["a red circle on a blue background"] * images
    generate(pipe, prompts, list(range(images)), steps, guidance, batch=images)  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(pipe, prompts, [r * images + i for i in range(images)], steps, guidance, batch=images)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"images_per_s": images / best, "batch_s": best, "images": images, "steps": steps,
            "guidance": guidance, "threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
