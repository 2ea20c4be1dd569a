"""`philip bench generate`: the serving path measured against the bare pipeline, in one run.

The server (`philip serve all`, generator + gateway) runs in its own process, so its peak RSS
is its own and client and server do not share a GIL; the bare pipeline runs in this process
with the same number of torch threads. Every measurement does the same work (prompt, base
seed, steps, guidance, size, scheduler), is preceded by a warm-up and is repeated; medians
are reported. The repeats interleave the kinds of measurement, so a slow spell on a shared
machine touches all of them rather than one side of a ratio.

What is measured (``images`` = 8 unless told otherwise):

* ``direct_s``: one bare pipeline call for the whole batch, decoded to PIL (no gRPC).
* ``grpc_s`` (= ``batch8_s``): the same batch as one Generate call through the gateway,
  no previews, from sending ``start`` to the ``result`` event.
* ``concurrent8_s``: ``images`` clients of one image each (seeds base+i, so the same images),
  started together; until the last result. The generator should merge them into one batch
  (``concurrent8_batches`` says how many pipeline calls it took).
* ``grpc_preview_s``, ``first_preview_s``: the batch call with a preview after every step;
  ``first_preview_s`` runs from sending ``start`` to the first ``preview`` event.
* ``step_s``: median gap between consecutive ``progress`` events of the preview-free calls.
* ``preview_s``: one preview's rendering cost for the batch (linear projection + PNGs),
  timed directly in this process.
* ``peak_rss_mb``: the server process's VmHWM, read just before it is stopped.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from philip.bench.server_process import ServerProcess, free_port

# Goals from the issue: a ratio or size is "met" when it is at most this.
GOALS: dict[str, float] = {
    "overhead_ratio": 1.05,
    "batching_ratio": 1.11,
    "first_preview_ratio": 1.2,
    "preview_cost_ratio": 1.05,
    "peak_rss_mb": 1500.0,
}
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class SamplingConfig:
    """What every generation bench asks the model for."""

    model_dir: Path = Path("models/philip-tiny")
    images: int = 8
    steps: int = 8
    guidance: float = 5.0
    size: int = 64
    scheduler: str = "dpm++"
    prompt: str = "a red circle on a blue background"
    seed: int = 1234


@dataclass(frozen=True)
class GenerateBenchConfig(SamplingConfig):
    """What to measure and how often."""

    repeats: int = 3
    threads: int = DEFAULT_THREADS
    port: int = 0  # 0 = a free port
    startup_timeout_s: float = 180.0
    call_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.images < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("images, repeats and threads must be >= 1")
        if self.steps < 2:
            raise ValueError("steps must be >= 2 (step_s is the gap between progress events)")


@dataclass
class CallTiming:
    """Arrival times of one Generate stream's events, in seconds from sending ``start``."""

    total_s: float = 0.0
    started_s: float | None = None
    first_preview_s: float | None = None
    progress_s: list[float] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def step_gaps(self) -> list[float]:
        """Time between consecutive progress events: one denoising step each (the first one excluded)."""
        return [b - a for a, b in zip(self.progress_s, self.progress_s[1:], strict=False)]


def resolve_threads(threads: int | None) -> int:
    """The torch thread count for both sides: the flag, else the server's own (PHILIP_THREADS or cores - 1)."""
    if threads:
        return threads
    from philip.settings import Settings

    return Settings.from_env().server.torch_threads


# ---- the bare pipeline in this process ----------------------------------------------------------


class DirectPipeline:
    """The model's pipeline called as the engine calls it, on one worker thread; no gRPC, queue or PNGs."""

    def __init__(self, cfg: GenerateBenchConfig) -> None:
        from philip.models.pipelines import load_pipeline, make_scheduler
        from philip.previews import PreviewEncoder

        self.cfg = cfg
        self.pipe = load_pipeline(cfg.model_dir)
        self.pipe.scheduler = make_scheduler(self.pipe, cfg.scheduler)
        self.previews = PreviewEncoder.for_pipeline(self.pipe, cfg.model_dir)  # the server has saved it by now
        # Like the engine's: torch work off the event loop's thread, always on the same thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct")

    async def run_async(self) -> tuple[float, list[np.ndarray]]:
        """:meth:`run` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def run(self) -> tuple[float, list[np.ndarray]]:
        """One batch call; returns its seconds and the images as arrays."""
        import torch

        cfg = self.cfg
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = self.pipe(
                prompt=[cfg.prompt] * cfg.images, negative_prompt=[""] * cfg.images,
                width=cfg.size, height=cfg.size, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                generator=[torch.Generator("cpu").manual_seed(cfg.seed + i) for i in range(cfg.images)],
            ).images
        return time.perf_counter() - t0, [np.asarray(image) for image in images]

    def preview_s(self, repeats: int = 20) -> float:
        """Median cost of rendering one preview of the batch: linear projection of an x0 and its PNGs."""
        import torch

        from philip.images import png_bytes

        pipe = self.pipe
        side = self.cfg.size // int(pipe.vae_scale_factor)
        x0 = torch.randn(self.cfg.images, int(pipe.vae.config.latent_channels), side, side,
                         generator=torch.Generator().manual_seed(0))
        times = []
        for _ in range(repeats + 2):  # two warm-ups
            t0 = time.perf_counter()
            for image in self.previews.encode_linear(x0):
                png_bytes(image)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[2:])


# ---- gRPC clients -------------------------------------------------------------------------------


class GatewayBench:
    """Generate calls through the gateway, timed event by event."""

    def __init__(self, cfg: GenerateBenchConfig, stub: Any) -> None:
        self.cfg = cfg
        self.stub = stub

    def _params(self, num_images: int, seed: int, preview_every: int) -> Any:
        from philip.v1 import common_pb2

        cfg = self.cfg
        return common_pb2.GenerationParams(
            prompt=cfg.prompt, num_images=num_images, width=cfg.size, height=cfg.size, steps=cfg.steps,
            guidance=cfg.guidance, scheduler=cfg.scheduler, seed=seed, preview_every=preview_every,
        )

    async def call(self, num_images: int, seed: int, preview_every: int) -> CallTiming:
        """One Generate stream to its result."""
        from philip.clients.generate import stream_generation
        from philip.images import decode_png

        timing = CallTiming()
        t0 = time.perf_counter()

        def on_event(event: Any) -> None:
            kind = event.WhichOneof("event")
            if kind == "started" and timing.started_s is None:
                timing.started_s = time.perf_counter() - t0
            elif kind == "progress":
                timing.progress_s.append(time.perf_counter() - t0)

        outcome = await stream_generation(self.stub, self._params(num_images, seed, preview_every), on_event,
                                          timeout_s=self.cfg.call_timeout_s)
        timing.total_s = time.perf_counter() - t0
        if len(outcome.images) != num_images:
            raise RuntimeError(f"expected {num_images} images, got {len(outcome.images)} (events {outcome.events})")
        timing.first_preview_s = outcome.first_preview_s
        timing.images = [np.asarray(decode_png(image.png)) for image in outcome.images]
        return timing

    async def batch(self, preview_every: int) -> CallTiming:
        """The whole batch as one call."""
        return await self.call(self.cfg.images, self.cfg.seed, preview_every)

    async def concurrent(self) -> tuple[float, int, list[np.ndarray]]:
        """One single-image client per image, started together: (seconds to the last result, batches, images)."""
        t0 = time.perf_counter()
        calls = await asyncio.gather(*(self.call(1, self.cfg.seed + i, 0) for i in range(self.cfg.images)))
        return time.perf_counter() - t0, count_batches(calls), [c.images[0] for c in calls]


def count_batches(calls: list[CallTiming]) -> int:
    """Pipeline calls the concurrent clients were served in: a job started after a result began a new one."""
    batches, first_result = 0, float("-inf")
    for call in sorted(calls, key=lambda c: c.started_s or 0.0):
        started = call.started_s or 0.0
        if started >= first_result:
            batches += 1
            first_result = call.total_s
        else:
            first_result = min(first_result, call.total_s)
    return batches


def max_pixel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    """Largest absolute 8-bit difference between two equally long image lists."""
    return max(int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max()) for x, y in zip(a, b, strict=True))


# ---- the whole run ------------------------------------------------------------------------------


def run_generate_bench(cfg: GenerateBenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start a server, measure everything, stop the server; returns the result object."""
    import torch

    say = log or (lambda _msg: None)
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="philip-bench-") as tmp:
        say(f"starting `philip serve all` on {cfg.model_dir} ({cfg.threads} threads)")
        server = ServerProcess(cfg.model_dir, cfg.port or free_port(), cfg.threads, Path(tmp))
        try:
            return asyncio.run(_measure(cfg, server, say))
        finally:
            server.stop()


async def _measure(cfg: GenerateBenchConfig, server: ServerProcess, say: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    await server.wait_ready(cfg.startup_timeout_s)
    say(f"server ready in {time.perf_counter() - t0:.1f} s; loading the direct pipeline")
    direct = DirectPipeline(cfg)
    try:
        return await _measure_with(cfg, server, direct, say)
    finally:
        direct.close()


async def _measure_with(cfg: GenerateBenchConfig, server: ServerProcess, direct: DirectPipeline,
                        say: Callable[[str], None]) -> dict[str, Any]:
    from philip.clients.generate import gateway_channel
    from philip.v1 import gateway_pb2_grpc

    direct_s: list[float] = []
    grpc_runs: list[CallTiming] = []
    preview_runs: list[CallTiming] = []
    concurrent_s: list[float] = []
    batches: list[int] = []
    async with gateway_channel(server.address) as channel:
        bench = GatewayBench(cfg, gateway_pb2_grpc.GatewayStub(channel))
        say("warming up")
        await direct.run_async()
        await bench.batch(0)
        await bench.batch(1)
        diffs: list[int] = []
        for r in range(cfg.repeats):
            say(f"repeat {r + 1}/{cfg.repeats}")
            seconds, direct_images = await direct.run_async()
            direct_s.append(seconds)
            grpc_runs.append(await bench.batch(0))
            seconds, n_batches, merged_images = await bench.concurrent()
            concurrent_s.append(seconds)
            batches.append(n_batches)
            preview_runs.append(await bench.batch(1))
            diffs += [max_pixel_diff(direct_images, grpc_runs[-1].images), max_pixel_diff(direct_images, merged_images)]
    preview_s = direct.preview_s()
    peak_rss_mb = server.peak_rss_mb()
    return summarize(cfg, direct_s=direct_s, grpc_runs=grpc_runs, preview_runs=preview_runs,
                     concurrent_s=concurrent_s, batches=batches, preview_s=preview_s, peak_rss_mb=peak_rss_mb,
                     max_pixel_diff=max(diffs))


def summarize(cfg: GenerateBenchConfig, *, direct_s: list[float], grpc_runs: list[CallTiming],
              preview_runs: list[CallTiming], concurrent_s: list[float], batches: list[int], preview_s: float,
              peak_rss_mb: float, max_pixel_diff: int) -> dict[str, Any]:
    """Medians and ratios from the raw samples (the result object's keys are the issue's)."""
    med = statistics.median
    direct = med(direct_s)
    grpc = med(c.total_s for c in grpc_runs)
    concurrent = med(concurrent_s)
    first_previews = [c.first_preview_s for c in preview_runs if c.first_preview_s is not None]
    if not first_previews:
        raise RuntimeError("no preview arrived with preview_every=1")
    first_preview = med(first_previews)
    step = med(gap for c in grpc_runs for gap in c.step_gaps())
    grpc_preview = med(c.total_s for c in preview_runs)
    settings = asdict(cfg)
    settings["model_dir"] = str(cfg.model_dir)
    return {
        "direct_s": direct,
        "grpc_s": grpc,
        "overhead_ratio": grpc / direct,
        "batch8_s": grpc,
        "concurrent8_s": concurrent,
        "batching_ratio": concurrent / grpc,
        "concurrent8_batches": max(batches),
        "first_preview_s": first_preview,
        "step_s": step,
        "preview_s": preview_s,
        "first_preview_ratio": first_preview / (step + preview_s),
        "grpc_preview_s": grpc_preview,
        "preview_cost_ratio": grpc_preview / grpc,
        "peak_rss_mb": peak_rss_mb,
        "max_pixel_diff": max_pixel_diff,
        **{k: settings[k] for k in ("model_dir", "images", "steps", "guidance", "size", "scheduler", "repeats",
                                    "threads")},
    }


def render_table(result: dict[str, Any], console: Console) -> None:
    """The headline numbers with their goals, for people (the JSON is for machines)."""
    table = Table(title=f"philip bench generate ({result['images']} images, {result['steps']} steps, "
                        f"{result['size']} px, {result['threads']} threads, median of {result['repeats']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("met", justify="center")
    rows = ("direct_s", "grpc_s", "overhead_ratio", "batch8_s", "concurrent8_s", "concurrent8_batches",
            "batching_ratio", "step_s", "preview_s", "first_preview_s", "first_preview_ratio", "grpc_preview_s",
            "preview_cost_ratio", "peak_rss_mb", "max_pixel_diff")
    for key in rows:
        value = result[key]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        goal = GOALS.get(key)
        met = "" if goal is None else ("[green]yes[/green]" if value <= goal else "[red]no[/red]")
        table.add_row(key, shown, "" if goal is None else f"<= {goal:g}", met)
    console.print(table)
