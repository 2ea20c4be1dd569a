"""The measurements of ``philip bench gpu`` on one loaded model (see :mod:`philip.bench.gpu`).

Times are taken after ``torch.cuda.synchronize`` on a GPU (kernels run asynchronously: a timer read without it
measures the launch, not the work). Each measurement is the median of ``repeats`` runs after one warm-up run,
which absorbs MIOpen's kernel search, ``torch.compile`` and allocator growth.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from philip.bench.gpu import GpuBenchConfig
    from philip.diffusion.run import Denoiser
    from philip.previews import PreviewEncoder


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> dict[str, Any]:
    """torch's peak allocation since the last reset on a GPU; the process's peak RSS on the CPU (never reset:
    cumulative over the models measured before, and it counts Python and the libraries too)."""
    if device == "cuda":
        return {"mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "kind": "torch.cuda.max_memory_allocated"}
    return {"mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "kind": "peak RSS of the process (cumulative)"}


@dataclass(eq=False)
class BenchRows:
    """One batch as a run's only member (a ``BatchMember``): it times each step's end and renders one preview."""

    images: int
    device: str
    previews: PreviewEncoder | None = None  # set: render the preview after step 1 and time it
    step_ends: list[float] = field(default_factory=list)
    preview_at: float | None = None
    preview_s: float | None = None

    def check_cancelled(self, after_step: int) -> bool:
        return False

    def progress(self, step: int, total: int) -> None:
        synchronize(self.device)
        self.step_ends.append(time.perf_counter())

    def wants_preview(self, step: int, total: int) -> bool:
        return self.previews is not None and step == 1

    def preview(self, step: int, x0: torch.Tensor) -> None:
        assert self.previews is not None
        t0 = time.perf_counter()
        self.previews.encode_fast(x0)  # what a default preview costs: PNG encoding aside
        synchronize(self.device)
        self.preview_at = time.perf_counter()
        self.preview_s = self.preview_at - t0


def median_of(fn: Callable[[], dict[str, float]], repeats: int) -> dict[str, float]:
    """Each key's median over ``repeats`` runs of ``fn`` after one warm-up."""
    fn()
    runs = [fn() for _ in range(max(1, repeats))]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def preview_encoder(pipe: Any, model_dir: Path) -> PreviewEncoder:
    """What the served folder previews with: its tiny decoder, else its saved projection, else a zero projection
    (the linear map's cost does not depend on its values; fitting one here would save a poor fit beside the model)."""
    from dataclasses import replace

    from philip.models.tiny_decoder import load_tiny_decoder
    from philip.previews import PROJECTION_FILE, PreviewEncoder

    saved = Path(model_dir) / PROJECTION_FILE
    channels = int(pipe.vae.config.latent_channels)
    linear = (PreviewEncoder.load(saved) if saved.is_file()
              else PreviewEncoder(np.zeros((channels, 3), np.float32), np.zeros(3, np.float32)))
    return replace(linear, tiny=load_tiny_decoder(model_dir, pipe))


@dataclass
class ModelUnderBench:
    """A loaded model folder and what every measurement of it shares."""

    model_dir: Path
    pipe: Any
    cfg: GpuBenchConfig
    device: str
    size: int
    guidance: float
    scheduler: str
    previews: PreviewEncoder
    denoiser: Denoiser

    @classmethod
    def load(cls, model_dir: Path, device: str, cfg: GpuBenchConfig) -> ModelUnderBench:
        from philip.diffusion.run import Denoiser
        from philip.models.load_options import LoadOptions
        from philip.models.pipelines import load_pipeline, native_size, served_defaults

        pipe = load_pipeline(model_dir, device, cfg.dtype, LoadOptions(compile=cfg.compile))
        defaults = served_defaults(model_dir, pipe)
        # The served native size (SDXL-Turbo's 512 under its UNet's 1024), never above the network's own (the tiny
        # test folders are 64 px networks under their family's 1024 px row).
        size = cfg.size or min(defaults.native_size or native_size(pipe), native_size(pipe))
        return cls(model_dir, pipe, cfg, device, size, defaults.guidance, defaults.scheduler,
                   preview_encoder(pipe, model_dir), Denoiser(pipe))

    def describe(self) -> dict[str, Any]:
        from philip.models.acceleration import attention_backend
        from philip.models.families import denoiser_model, family_of

        family = family_of(self.pipe)
        network = denoiser_model(self.pipe)
        tiny = self.previews.tiny
        return {"model_dir": str(self.model_dir), "family": family.name, "pipeline": type(self.pipe).__name__,
                "dtype": str(network.dtype).split(".")[-1], "vae_dtype": str(self.pipe.vae.dtype).split(".")[-1],
                "size": self.size, "steps": self.cfg.steps, "guidance": self.guidance, "scheduler": self.scheduler,
                "denoiser_params": sum(p.numel() for p in network.parameters()),
                "preview": f"tiny_decoder:{tiny.folder}" if tiny is not None else "linear",
                "attention": attention_backend(self.pipe)}

    def _run(self, member: BenchRows) -> dict[str, float]:
        """One generation of ``member.images`` images, decoded; seconds of its parts."""
        from philip.diffusion.callbacks import RenderPreviews, ReportProgress
        from philip.models.conditioning import prompt_kwargs

        n = member.images
        member.step_ends.clear()
        synchronize(self.device)
        start = time.perf_counter()
        run = self.denoiser.start([member], scheduler=self.scheduler, steps=self.cfg.steps)
        latents = run([ReportProgress(run), RenderPreviews(run)],
                      **prompt_kwargs(self.pipe, [self.cfg.prompt] * n, [""] * n), width=self.size,
                      height=self.size, guidance_scale=self.guidance,
                      generator=[torch.Generator("cpu").manual_seed(i) for i in range(n)])
        synchronize(self.device)
        denoised = time.perf_counter()
        run.decode_live(latents)
        synchronize(self.device)
        ends = member.step_ends
        step_s = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else denoised - start
        return {"total_s": time.perf_counter() - start, "step_s": step_s, "decode_s": time.perf_counter() - denoised,
                "preview_after_s": (member.preview_at or start) - start, "preview_s": member.preview_s or 0.0}

    def batch(self, n: int) -> dict[str, Any]:
        """Images/s (prompt encoding, steps and decode) and the latency of one step between two step ends."""
        reset_peak_memory(self.device)
        times = median_of(lambda: self._run(BenchRows(n, self.device)), self.cfg.repeats)
        row = {"batch": n, "images_per_s": round(n / times["total_s"], 3), "step_ms": round(times["step_s"] * 1e3, 2),
               "decode_ms": round(times["decode_s"] * 1e3, 2), "total_s": round(times["total_s"], 3)}
        if self.device == "cuda":
            row["peak_memory_mib"] = peak_memory_mib(self.device)["mib"]
        return row

    def first_preview_ms(self) -> dict[str, float]:
        """Batch 1: from the request's start to the first preview image (after step 1), and the preview alone."""
        times = median_of(lambda: self._run(BenchRows(1, self.device, self.previews)), self.cfg.repeats)
        return {"ms": round(times["preview_after_s"] * 1e3, 2), "render_ms": round(times["preview_s"] * 1e3, 2)}

    def fabric(self) -> dict[str, Any]:
        from philip.bench.gpu_fabric import fabric_ratio

        return fabric_ratio(self)

    def close(self) -> None:
        self.denoiser.close()
