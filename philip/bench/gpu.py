"""`philip bench gpu`: what each model folder costs on this machine's accelerator (meant for a lent MI210/W7900,
runs anywhere): images/s and latency per step at batch 1, 4 and 8, the first preview's latency, FABRIC's cost
over a plain round, peak memory, dtype and attention backend. docs/GPU.md explains each field.

Every run goes through the services' own code: the pipeline as ``load_pipeline`` loads and accelerates it,
a :class:`~philip.diffusion.run.Denoiser` run (the generator's path) with the previews the served folder gets,
and the refiner's :class:`~services.refiner.rounds.RoundRunner` for FABRIC. With no ``--model`` on a CPU it
runs philip-tiny and the tiny random-weight folders of scripts/make_tiny_families.py: wiring and relative costs
only (each result says so), never a real model's speed or quality.
"""

from __future__ import annotations

import gc
import importlib.util
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from philip.bench.gpu_runs import ModelUnderBench, peak_memory_mib, reset_peak_memory, synchronize

REPO = Path(__file__).resolve().parents[2]
TINY_PARAMS = 50_000_000  # philip-tiny (6 M) and the test folders; SD-1.5's UNet has 860 M
Log = Callable[[str], None]


@dataclass(frozen=True)
class GpuBenchConfig:
    models: tuple[Path, ...] = ()  # none: philip-tiny and the tiny family folders (CPU only)
    steps: int = 4
    batches: tuple[int, ...] = (1, 4, 8)
    size: int = 0  # 0 = each model's native size
    repeats: int = 1  # timed runs per measurement after one warm-up (medians)
    dtype: str = ""  # PHILIP_DTYPE: "" = fp16 on a GPU, fp32 on the CPU
    compile: bool = False  # PHILIP_COMPILE
    fabric_refs: tuple[int, int] = (1, 1)  # liked, disliked: 2 references
    prompt: str = "a red circle on a blue background"
    families: tuple[str, ...] = field(default=("sd1", "sdxl", "sd3", "flux"))  # tiny folders built when no --model


def bench_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"  # ROCm's torch answers as cuda


def tiny_folders(out_dir: Path, families: Sequence[str]) -> list[Path]:
    """philip-tiny (when trained) and scripts/make_tiny_families.py's random-weight folders, built in ``out_dir``."""
    spec = importlib.util.spec_from_file_location("make_tiny_families", REPO / "scripts" / "make_tiny_families.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    known = [f for f in families if f in script.BUILDERS]  # SD3/Flux only where the script builds them
    philip_tiny = REPO / "models" / "philip-tiny"
    return ([philip_tiny] if (philip_tiny / "model_index.json").is_file() else []) + \
        list(script.make_tiny_families(out_dir, tuple(known)).values())


def run_gpu_bench(cfg: GpuBenchConfig, log: Log = lambda _: None) -> dict[str, Any]:
    """One result per model folder; a folder that fails to load or run is reported with its error, not fatal."""
    device = bench_device()
    if not cfg.models and device != "cpu":
        raise ValueError("on a GPU name the model folders to measure: --model DIR (repeatable)")
    with tempfile.TemporaryDirectory(prefix="philip-bench-gpu-") as tmp:
        models = list(cfg.models) or tiny_folders(Path(tmp), cfg.families)
        results = [_bench_or_error(model, cfg, device, log) for model in models]
    note = "" if cfg.models else ("no --model: philip-tiny and random-weight tiny folders "
                                  "(scripts/make_tiny_families.py): wiring, not real-model speed or quality")
    return {"note": note, "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "hip": torch.version.hip or "", "cuda": torch.version.cuda or "",
            "steps": cfg.steps, "batches": list(cfg.batches), "compile": cfg.compile, "models": results}


def _bench_or_error(model_dir: Path, cfg: GpuBenchConfig, device: str, log: Log) -> dict[str, Any]:
    log(f"bench gpu: {model_dir}")
    try:
        return bench_model(model_dir, cfg, device)
    except Exception as exc:  # one bad folder must not lose the others' numbers
        return {"model_dir": str(model_dir), "error": f"{type(exc).__name__}: {exc}"}
    finally:
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def bench_model(model_dir: Path, cfg: GpuBenchConfig, device: str) -> dict[str, Any]:
    """Load, then measure batches, the first preview and FABRIC on one folder."""
    reset_peak_memory(device)
    t0 = time.perf_counter()
    bench = ModelUnderBench.load(model_dir, device, cfg)
    synchronize(device)
    load_s = time.perf_counter() - t0
    try:
        batches = [bench.batch(n) for n in cfg.batches]
        result = {**bench.describe(), "load_s": round(load_s, 2), "batches": batches,
                  "first_preview_ms": bench.first_preview_ms(), "fabric": bench.fabric()}
    finally:
        bench.close()
    result["peak_memory_mib"] = peak_memory_mib(device)
    params = result["denoiser_params"]
    result["weights"] = ("tiny model (denoiser under 50 M parameters): wiring and relative costs only, not a real "
                         "checkpoint's speed" if params < TINY_PARAMS else "full-size")
    return result


__all__ = ["GpuBenchConfig", "bench_device", "bench_model", "run_gpu_bench", "tiny_folders"]
