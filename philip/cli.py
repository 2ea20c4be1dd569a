"""The `philip` command: serve, generate, train, evaluate, benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="PHiLIP: Personalized Human-in-Loop Image Production.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure model quality (prints one JSON object last).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (not tests): timings and ratios measured in one run.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            console.print(f"[bold]{key}[/bold]: {value}")


def _threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


@app.command("serve")
def serve_cmd(
    role: str = typer.Argument("all", help="generator | gateway | all (every service in one process)."),
    port: int | None = typer.Option(None, help="Port to listen on (PHILIP_PORT, default 50051)."),
    host: str | None = typer.Option(None, help="Address to bind (PHILIP_HOST, default 127.0.0.1)."),
    redis_url: str | None = typer.Option(None, help="Redis URL (PHILIP_REDIS_URL); absent = in-process store."),
    model_dir: str | None = typer.Option(None, help="Diffusers model folder (PHILIP_MODEL_DIR)."),
) -> None:
    """Run PHiLIP's gRPC services until SIGTERM/SIGINT, then drain and stop gracefully."""
    import asyncio

    from philip.logs import configure_logging
    from philip.settings import Settings
    from services.app import serve

    settings = Settings.from_env(port=port, host=host, redis_url=redis_url, model_dir=model_dir)
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(serve(role, settings))


@app.command("health")
def health_cmd(
    target: str = typer.Option("127.0.0.1:50051", "--gateway", help="Server address host:port."),
    wait: float = typer.Option(0.0, help="Keep trying this many seconds until SERVING."),
    service: str = typer.Option("", help="Service name; empty = the whole server."),
) -> None:
    """Ask a server's grpc.health.v1 status (exit 0 when SERVING)."""
    import asyncio
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def check() -> str:
        deadline = time.monotonic() + wait
        while True:
            try:
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    if status == "SERVING" or time.monotonic() >= deadline:
                        return status
            except grpc.aio.AioRpcError as err:
                if time.monotonic() >= deadline:
                    return err.code().name
            await asyncio.sleep(0.5)

    status = asyncio.run(check())
    print(status)
    raise typer.Exit(0 if status == "SERVING" else 1)


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Argument(..., help="What to draw."),
    n: int = typer.Option(4, "-n", "--num-images", help="Images in the batch (1-8)."),
    out: Path = typer.Option(Path("out"), help="Folder for the images and the contact sheet."),
    gateway: str = typer.Option("127.0.0.1:50051", help="Gateway address host:port."),
    steps: int = typer.Option(8, help="Denoising steps."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance."),
    seed: int | None = typer.Option(None, help="Base seed (image i uses seed+i); default random."),
    negative: str = typer.Option("", help="Negative prompt."),
    scheduler: str = typer.Option("dpm++", help="dpm++ | euler | euler_a | ddim | lcm."),
    style: str = typer.Option("", help="Named style preset from the server's styles file."),
    preview_every: int = typer.Option(2, help="Steps between previews (0 = none)."),
    timeout: float = typer.Option(300.0, help="Deadline for the whole call, seconds."),
) -> None:
    """Generate a low-resolution batch through the gateway, streaming progress."""
    import asyncio

    import grpc
    from rich.progress import Progress

    from philip.clients.generate import gateway_channel, save_outcome, stream_generation
    from philip.v1 import common_pb2, gateway_pb2_grpc

    params = common_pb2.GenerationParams(
        prompt=prompt, negative_prompt=negative, num_images=n, steps=steps, guidance=guidance,
        scheduler=scheduler, style=style, preview_every=preview_every,
    )
    if seed is not None:
        params.seed = seed

    async def run() -> None:
        async with gateway_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            with Progress(console=console) as progress:
                task = progress.add_task("queued", total=steps)

                def on_event(event):  # type: ignore[no-untyped-def]
                    kind = event.WhichOneof("event")
                    if kind == "queued":
                        progress.update(task, description=f"queued (position {event.queued.position})")
                    elif kind == "progress":
                        progress.update(task, completed=event.progress.step, description="denoising")
                    elif kind == "preview":
                        progress.update(task, description=f"denoising (preview at step {event.preview.step})")

                outcome = await stream_generation(stub, params, on_event, timeout_s=timeout)
        if outcome.cancelled:
            console.print("[yellow]cancelled[/yellow]")
            raise typer.Exit(1)
        paths, sheet = save_outcome(outcome, out)
        for img, path in zip(outcome.images, paths, strict=True):
            console.print(f"image {img.index + 1}: seed {img.seed} -> {path}")
        console.print(f"[green]contact sheet[/green] {sheet}")

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        console.print(f"[red]{err.code().name}[/red]: {err.details()}")
        raise typer.Exit(2) from None


@app.command("train-tiny")
def train_tiny_cmd(
    out_dir: Path = typer.Option(Path("models/philip-tiny"), help="Where the diffusers folder is written."),
    work_dir: Path = typer.Option(Path("models/.philip-tiny-train"), help="Checkpoints; rerun to resume."),
    steps: int = typer.Option(2400, help="UNet + text encoder steps."),
    vae_steps: int = typer.Option(400, help="VAE steps."),
    batch: int = typer.Option(64, help="Diffusion batch size."),
    threads: int = typer.Option(2, help="Torch CPU threads."),
    lr: float = typer.Option(6e-4, help="Peak learning rate of the UNet + text encoder (cosine decay to 10 %)."),
    init_from: Path | None = typer.Option(
        None, help="Continue from an exported philip-tiny folder (keeps its VAE); use a fresh --work-dir."),
) -> None:
    """Train philip-tiny (VAE, text encoder, UNet) from procedural shapes; resumes after interruption."""
    from philip.tiny.train import TinyTrainConfig, train_tiny

    if init_from is not None and not (init_from / "unet").is_dir():
        raise typer.BadParameter(
            f"{init_from} is not an exported philip-tiny folder (no unet/)", param_hint="--init-from")
    cfg = TinyTrainConfig(out_dir=out_dir, work_dir=work_dir, steps=steps, vae_steps=vae_steps, batch=batch,
                          threads=threads, lr=lr, init_from=init_from)
    timings = train_tiny(cfg)
    console.print(f"[green]saved[/green] {out_dir} in {timings['total_s'] / 60:.1f} min")
    _emit(timings, True)


@app.command("train-upscaler")
def train_upscaler_cmd(
    out: Path = typer.Option(Path("models/philip-tiny-x4.onnx"), help="ONNX file to write."),
    steps: int = typer.Option(400, help="Training steps."),
    threads: int = typer.Option(2, help="Torch CPU threads."),
) -> None:
    """Train the x4 super-resolution network on the shapes and export it to ONNX."""
    from philip.tiny.upscaler_train import train_upscaler

    _threads(threads)
    result = train_upscaler(out, steps=steps)
    console.print(f"[green]saved[/green] {out}")
    _emit(result, True)


@eval_app.command("model")
def eval_model_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    n: int = typer.Option(168, help="Held-out full captions (168 = every colour/shape combination once)."),
    steps: int = typer.Option(8, help="Denoising steps."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance."),
    scheduler: str = typer.Option("dpm++", help="Scheduler name."),
    save_dir: Path | None = typer.Option(None, help="Also write a contact sheet of the first 64 images here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Colour and shape accuracy of generated images, judged by pixel statistics."""
    from philip.tiny.evaluate import evaluate_model

    _emit(evaluate_model(model_dir, n=n, steps=steps, guidance=guidance, scheduler=scheduler, save_dir=save_dir),
          as_json)


@eval_app.command("upscaler")
def eval_upscaler_cmd(
    path: Path = typer.Option(Path("models/philip-tiny-x4.onnx"), help="ONNX super-resolution model."),
    n: int = typer.Option(64, help="Held-out 256 px renders."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """PSNR of the upscaler vs bicubic on held-out renders downsampled to 64 px."""
    from philip.tiny.evaluate import evaluate_upscaler

    _emit(evaluate_upscaler(path, n=n), as_json)


@bench_app.command("model")
def bench_model_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    images: int = typer.Option(8, help="Images per batch."),
    steps: int = typer.Option(8, help="Denoising steps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Images per second of the bare torch pipeline (CFG on) and peak RSS."""
    from philip.tiny.evaluate import bench_model

    _emit(bench_model(model_dir, images=images, steps=steps), as_json)


@bench_app.command("generate")
def bench_generate_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder (server and direct)."),
    images: int = typer.Option(8, help="Images per batch (and concurrent single-image clients)."),
    steps: int = typer.Option(8, help="Denoising steps (>= 2)."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance."),
    size: int = typer.Option(64, help="Width and height in pixels."),
    repeats: int = typer.Option(3, help="Measurements per kind after one warm-up; medians are reported."),
    threads: int | None = typer.Option(None, help="Torch threads on both sides (PHILIP_THREADS, default 2)."),
    port: int = typer.Option(0, help="Port for the benchmarked server (0 = a free one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Serving path vs bare pipeline: gRPC overhead, batching, previews and the server's peak RSS."""
    from philip.bench.generate import GenerateBenchConfig, render_table, resolve_threads, run_generate_bench

    cfg = GenerateBenchConfig(model_dir=model_dir, images=images, steps=steps, guidance=guidance, size=size,
                              repeats=repeats, threads=resolve_threads(threads), port=port)
    result = run_generate_bench(cfg, log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    render_table(result, console)
    _emit(result, as_json)


if __name__ == "__main__":
    app()
