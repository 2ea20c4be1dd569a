"""`philip bench ...`: benchmarks (not tests), timings and ratios measured in one run."""

from __future__ import annotations

from pathlib import Path

import typer

from philip.clients.output import console, emit, set_threads

bench_app = typer.Typer(help="Benchmarks (not tests): timings and ratios measured in one run.", no_args_is_help=True)


@bench_app.command("model")
def bench_model_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    images: int = typer.Option(8, help="Images per batch."),
    steps: int = typer.Option(8, help="Denoising steps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Images per second of the bare torch pipeline (CFG on) and peak RSS."""
    from philip.tiny.evaluate import bench_model

    emit(bench_model(model_dir, images=images, steps=steps), as_json)


@bench_app.command("generate")
def bench_generate_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder (server and direct)."),
    images: int = typer.Option(8, help="Images per batch (and concurrent single-image clients)."),
    steps: int = typer.Option(8, help="Denoising steps (>= 2)."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance."),
    size: int = typer.Option(64, help="Width and height in pixels."),
    repeats: int = typer.Option(3, help="Measurements per kind after one warm-up; medians are reported."),
    threads: int | None = typer.Option(None, help="Torch threads on both sides (PHILIP_THREADS, default: cores - 1)."),
    port: int = typer.Option(0, help="Port for the benchmarked server (0 = a free one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Serving path vs bare pipeline: gRPC overhead, batching, previews and the server's peak RSS."""
    from philip.bench.generate import GenerateBenchConfig, render_table, resolve_threads, run_generate_bench

    cfg = GenerateBenchConfig(model_dir=model_dir, images=images, steps=steps, guidance=guidance, size=size,
                              repeats=repeats, threads=resolve_threads(threads), port=port)
    result = run_generate_bench(cfg, log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    render_table(result, console)
    emit(result, as_json)


@bench_app.command("http")
def bench_http_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder of the server."),
    images: int = typer.Option(4, help="Images per generation and per session round."),
    steps: int = typer.Option(8, help="Denoising steps."),
    preview_every: int = typer.Option(1, help="A preview every n steps (>= 1)."),
    size: int = typer.Option(64, help="Width and height in pixels."),
    repeats: int = typer.Option(5, help="Measurements per edge after one warm-up each; medians are reported."),
    viewers: int = typer.Option(200, help="Concurrent SSE viewers of one session (1-2000)."),
    threads: int | None = typer.Option(None, help="Torch threads of the server (PHILIP_THREADS, default: cores - 1)."),
    port: int = typer.Option(0, help="gRPC port of the benchmarked server (0 = a free one)."),
    http_port: int = typer.Option(0, help="HTTP port of the benchmarked server (0 = a free one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """HTTP/JSON + SSE vs gRPC on one server: generation overhead, first preview, 200 SSE viewers' RSS."""
    from philip.bench.generate import resolve_threads
    from philip.bench.http_api import HttpBenchConfig, run_http_bench
    from philip.bench.http_report import render_table

    cfg = HttpBenchConfig(model_dir=model_dir, images=images, steps=steps, preview_every=preview_every, size=size,
                          repeats=repeats, viewers=viewers, threads=resolve_threads(threads), port=port,
                          http_port=http_port)
    result = run_http_bench(cfg, log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    render_table(result, console)
    emit(result, as_json)


@bench_app.command("priority")
def bench_priority_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    rounds: int = typer.Option(3, help="Rounds per measurement (medians are reported)."),
    steps: int = typer.Option(8, help="Denoising steps per round."),
    threads: int | None = typer.Option(None, help="Torch threads (PHILIP_THREADS, default: cores - 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """A round's time idle vs beside a training job, with and without interactive-first scheduling."""
    import asyncio

    from philip.bench.priority import run_priority_bench

    emit(asyncio.run(run_priority_bench(model_dir, rounds=rounds, steps=steps, threads=threads)), as_json)


@bench_app.command("load")
def bench_load_cmd(
    sessions: int = typer.Option(50, help="Concurrent scripted sessions (2 rounds + finalize each)."),
    steps: int = typer.Option(8, help="Denoising steps per round."),
    gateway: str | None = typer.Option(None, help="Gateway host:port; absent = in-process services (serve all)."),
    redis_url: str | None = typer.Option("redis://127.0.0.1:6379/0",
                                         help="Store of the in-process services (a fresh key prefix)."),
    compare: str = typer.Option("", help="Concurrencies, e.g. 1,8,50: the in-process refiner one round at a time "
                                "vs batched at each, against the physical limit (ideal_round_s, p95_vs_ideal)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Many sessions at once: completed, lost, round latency percentiles."""
    import asyncio

    from philip.bench.load import bench_load, compare_load
    from philip.logs import configure_logging

    configure_logging("console", "warning")
    if compare:
        try:
            levels = tuple(int(c) for c in compare.split(",") if c.strip())
        except ValueError:
            raise typer.BadParameter(f"{compare!r} is not a list of numbers like 1,8,50",
                                     param_hint="--compare") from None
        emit(asyncio.run(compare_load(levels, steps, redis_url)), as_json)
        return
    emit(asyncio.run(bench_load(sessions, steps, gateway, redis_url)), as_json)


@bench_app.command("soak")
def bench_soak_cmd(
    sessions: int = typer.Option(100, help="Scripted sessions (2 rounds + finalize each), resuming through faults."),
    jobs: int = typer.Option(5, help="Training jobs (LoRA, 5 reference renders) meanwhile."),
    concurrency: int = typer.Option(12, help="Sessions in flight at once."),
    steps: int = typer.Option(4, help="Denoising steps per round."),
    train_steps: int = typer.Option(15, help="Steps per training job."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Sessions and training jobs over two gateways and two generators on a private redis-server, while Redis is
    restarted and a gateway and a generator are SIGKILLed and started again: completed, lost, INTERNAL, adapters."""
    import asyncio

    from philip.bench.soak import run_soak
    from philip.logs import configure_logging

    configure_logging("console", "warning")
    emit(asyncio.run(run_soak(sessions, jobs, concurrency=concurrency, steps=steps, train_steps=train_steps)),
         as_json)


@bench_app.command("refine")
def bench_refine_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    upscaler: Path = typer.Option(Path("models/philip-tiny-x4.onnx"), help="ONNX x4 model."),
    images: int = typer.Option(4, help="Images per round."),
    steps: int = typer.Option(8, help="Denoising steps."),
    liked: int = typer.Option(1, help="Liked references of the FABRIC round."),
    disliked: int = typer.Option(1, help="Disliked references of the FABRIC round."),
    repeats: int = typer.Option(5, help="Timed runs after a warm-up; medians reported."),
    threads: int | None = typer.Option(None, help="Torch threads."),
    sessions: int = typer.Option(8, help="Concurrent sessions of the batching part (0 = skip it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """A FABRIC round vs a plain round (fabric_ratio, goal <= 2.0), the x4 upscale time, and rounds of concurrent
    sessions through the refiner's queue vs one batched call (refine_batching, goal >= 0.9)."""
    from philip.bench.refine import RefineBenchConfig, run_refine_bench

    set_threads(threads)
    cfg = RefineBenchConfig(model_dir=model_dir, upscaler_path=upscaler, images=images, steps=steps, liked=liked,
                            disliked=disliked, repeats=repeats, sessions=max(1, sessions), batching=sessions > 0)
    emit(run_refine_bench(cfg), as_json)


@bench_app.command("fabric-layers")
def bench_fabric_layers_cmd(
    model_dir: Path | None = typer.Option(None, help="Diffusers model folder (default: the tiny random-weight SDXL "
                                                     "folder, built for the run)."),
    layers: list[str] = typer.Option(["all", "up", "mid+up", "down+mid"], "--fabric-layers",
                                     help="Layer choices to compare (repeatable)."),
    images: int = typer.Option(4, help="Images per round."),
    steps: int = typer.Option(8, help="Denoising steps."),
    liked: int = typer.Option(2, help="Liked references of the FABRIC round."),
    disliked: int = typer.Option(2, help="Disliked references of the FABRIC round."),
    repeats: int = typer.Option(3, help="Timed runs after a warm-up; medians reported."),
    real: bool = typer.Option(True, help="Also real SDXL (1024 px) and SD-1.5 (512 px) from their configs on the "
                                         "meta device."),
    threads: int | None = typer.Option(None, help="Torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Per FABRIC layer choice (PHILIP_FABRIC_LAYERS): a FABRIC round vs a plain round (fabric_ratio) and the bytes
    one reference's recorded activations take; random weights measure time and memory only."""
    from philip.bench.fabric_layers import FabricLayersBenchConfig, run_fabric_layers_bench

    set_threads(threads)
    cfg = FabricLayersBenchConfig(model_dir=model_dir, choices=tuple(layers), images=images, steps=steps, liked=liked,
                                  disliked=disliked, repeats=repeats, real=real)
    emit(run_fabric_layers_bench(cfg), as_json)


@bench_app.command("gpu")
def bench_gpu_cmd(
    model: list[Path] = typer.Option([], "--model", help="Diffusers model folder (repeatable). None on a CPU: "
                                     "philip-tiny and tiny random-weight SD-1.x/SDXL/SD3/Flux folders (wiring only)."),
    steps: int = typer.Option(4, help="Denoising steps per run."),
    batches: str = typer.Option("1,4,8", help="Batch sizes, e.g. 1,4,8."),
    size: int = typer.Option(0, help="Width and height in pixels (0 = each model's native size)."),
    repeats: int = typer.Option(1, help="Timed runs per measurement after one warm-up; medians are reported."),
    dtype: str = typer.Option("", help="PHILIP_DTYPE: fp16 | bf16 | fp32 ('' = fp16 on a GPU, fp32 on the CPU)."),
    compile_: bool = typer.Option(False, "--compile", help="PHILIP_COMPILE=1: torch.compile the unchanging blocks."),
    threads: int | None = typer.Option(None, help="Torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Per model folder: images/s and step latency per batch size, first-preview latency, FABRIC ratio (2
    references), peak memory, dtype and attention backend (docs/GPU.md)."""
    from philip.bench.gpu import GpuBenchConfig, run_gpu_bench
    from philip.logs import configure_logging

    configure_logging("console", "warning")  # stderr: stdout stays one JSON object
    try:
        sizes = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        raise typer.BadParameter(f"{batches!r} is not a list of numbers like 1,4,8", param_hint="--batches") from None
    if not sizes or min(sizes) < 1 or steps < 1:
        raise typer.BadParameter("batch sizes and --steps must be >= 1", param_hint="--batches")
    set_threads(threads)
    cfg = GpuBenchConfig(models=tuple(model), steps=steps, batches=sizes, size=size, repeats=repeats, dtype=dtype,
                         compile=compile_)
    emit(run_gpu_bench(cfg, log=lambda msg: console.print(f"[dim]{msg}[/dim]")), as_json)
