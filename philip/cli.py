"""The `philip` command: serve, generate, train, evaluate, benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from philip.bench.cli import bench_app
from philip.clients.adapter_cli import adapter_app, keys_app
from philip.clients.output import console, emit, set_threads
from philip.clients.session_command import session_cmd

app = typer.Typer(help="PHiLIP: Personalized Human-in-Loop Image Production.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure model quality (prints one JSON object last).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(adapter_app, name="adapter")
app.add_typer(keys_app, name="keys")
app.command("session")(session_cmd)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@app.callback()
def _quiet_logs() -> None:
    """Library logs go to stderr, warnings and up, so a command's own output (and its JSON) stays clean;
    `philip serve` configures the servers' JSON logs from PHILIP_LOG_* itself."""
    from philip.logs import configure_logging

    configure_logging("console", "warning")


@app.command("serve")
def serve_cmd(
    role: str = typer.Argument(
        "all", help="generator | refiner | personalizer | gateway | all (every service in one process)."),
    port: int | None = typer.Option(None, help="Port to listen on (PHILIP_PORT, default 50051)."),
    host: str | None = typer.Option(None, help="Address to bind (PHILIP_HOST, default 127.0.0.1)."),
    redis_url: str | None = typer.Option(None, help="Redis URL (PHILIP_REDIS_URL); absent = in-process store."),
    model_dir: str | None = typer.Option(None, help="Diffusers model folder (PHILIP_MODEL_DIR)."),
    http_port: int | None = typer.Option(None, help="The gateway's HTTP/JSON API and studio (PHILIP_HTTP_PORT, "
                                                    "default 8080; 0 = off)."),
) -> None:
    """Run PHiLIP's services until SIGTERM/SIGINT, then drain and stop gracefully.

    The gateway (roles gateway and all) serves gRPC on --port and HTTP + the studio on --http-port."""
    import asyncio

    from philip.logs import configure_logging
    from philip.settings import Settings
    from services.app import serve

    settings = Settings.from_env(port=port, host=host, redis_url=redis_url, model_dir=model_dir,
                                 http_port=http_port)
    configure_logging(settings.server.log_format, settings.server.log_level)
    asyncio.run(serve(role, settings))


@app.command("config")
def config_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The effective settings (every PHILIP_* variable, from the environment or its default), secrets masked;
    exits 2 naming the variable when one is invalid."""
    import json

    from philip.config_report import effective_settings
    from philip.settings import Settings

    try:
        report = effective_settings(Settings.from_env())
    except ValueError as exc:
        console.print(f"[red]invalid setting:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps({group: {name: entry["value"] for name, entry in values.items()}
                          for group, values in report.items()}, indent=2))
        return
    for group, values in report.items():
        console.print(f"[bold]{group}[/bold]")
        for name, entry in values.items():
            marker = "*" if entry["from"] == "env" else " "
            console.print(f"  {marker} {name} = {entry['value']!r}", highlight=False)
    console.print("(* set in the environment)")


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
    steps: int = typer.Option(0, help="Denoising steps; 0: the served model's default (GetModelInfo)."),
    guidance: float | None = typer.Option(None, help="Classifier-free guidance; default: the served model's."),
    seed: int | None = typer.Option(None, help="Base seed (image i uses seed+i); default random."),
    negative: str = typer.Option("", help="Negative prompt."),
    scheduler: str = typer.Option("", help="dpm++ | euler | euler_a | ddim | lcm (SD-1.x/SDXL), flow_euler "
                                           "(SD3/Flux); empty: the served model's default."),
    style: str = typer.Option("", help="Named style preset from the server's styles file."),
    preview_every: int = typer.Option(2, help="Steps between previews (0 = none)."),
    adapter: list[str] = typer.Option([], help="Adapter id to activate (repeatable; `philip adapter list`)."),
    timeout: float = typer.Option(300.0, help="Deadline for the whole call, seconds."),
) -> None:
    """Generate a low-resolution batch through the gateway, streaming progress."""
    import asyncio

    import grpc
    from rich.progress import Progress

    from philip.clients.generate import gateway_channel, progress_reporter, save_outcome, stream_generation
    from philip.v1 import common_pb2, gateway_pb2_grpc

    params = common_pb2.GenerationParams(
        prompt=prompt, negative_prompt=negative, num_images=n, steps=steps,
        scheduler=scheduler, style=style, preview_every=preview_every, adapter_ids=adapter,
    )
    if seed is not None:
        params.seed = seed
    if guidance is not None:
        params.guidance = guidance

    async def run() -> None:
        async with gateway_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            with Progress(console=console) as progress:
                outcome = await stream_generation(stub, params, progress_reporter(progress), timeout_s=timeout)
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
    emit(timings, True)


@app.command("train-upscaler")
def train_upscaler_cmd(
    out: Path = typer.Option(Path("models/philip-tiny-x4.onnx"), help="ONNX file to write."),
    steps: int = typer.Option(400, help="Training steps."),
    threads: int = typer.Option(2, help="Torch CPU threads."),
) -> None:
    """Train the x4 super-resolution network on the shapes and export it to ONNX."""
    from philip.tiny.upscaler_train import train_upscaler

    set_threads(threads)
    result = train_upscaler(out, steps=steps)
    console.print(f"[green]saved[/green] {out}")
    emit(result, True)


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

    emit(evaluate_model(model_dir, n=n, steps=steps, guidance=guidance, scheduler=scheduler, save_dir=save_dir),
          as_json)


@eval_app.command("feedback")
def eval_feedback_cmd(
    trials: int = typer.Option(30, help="Trials (a hidden target and an underspecified prompt each)."),
    rounds: int = typer.Option(3, help="Rounds per trial for the match rates."),
    num_images: int = typer.Option(4, help="Images per round."),
    steps: int = typer.Option(8, help="Denoising steps."),
    guidance: float = typer.Option(2.0, help="Classifier-free guidance (philip-tiny keeps shapes best near 2)."),
    cap: int = typer.Option(200, help="Image cap for images-to-first-match (both methods)."),
    seed: int = typer.Option(0, help="Seed of the trial draws."),
    likes: int = typer.Option(1, help="Images the simulated user likes per round."),
    user: str = typer.Option("colour", help="Simulated user: 'colour' ranks equal misses by how near the drawn "
                             "colours are to the target's; 'misses' counts missed attributes only (ties by position)."),
    diversity: float | None = typer.Option(None, help="Seed-steering diversity 0-1 (default: the refiner's)."),
    max_weight: float | None = typer.Option(None, help="FABRIC max feedback weight (default: the refiner's)."),
    weight: list[str] = typer.Option([], "--weight", help="Any feedback weight as NAME=VALUE (start, end, "
                                     "min_weight, max_weight, neg_scale, diversity); repeatable."),
    gateway: str | None = typer.Option(None, help="Gateway host:port; absent = in-process services (serve all)."),
    trials_log: Path | None = typer.Option(None, help="Append one JSON line per finished trial to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """FABRIC's protocol with a simulated user: feedback rounds vs no feedback vs blind re-rolling."""
    import asyncio
    import json

    from rich.progress import Progress

    from philip.evals.feedback import FeedbackConfig, evaluate_feedback, trial_record
    from philip.feedback_weights import parse_weight_options
    from philip.logs import configure_logging

    configure_logging("console", "warning")  # the in-process services' logs would drown the progress
    try:
        weights = parse_weight_options(weight)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--weight") from None
    weights |= {k: v for k, v in (("diversity", diversity), ("max_weight", max_weight)) if v is not None}
    try:
        cfg = FeedbackConfig(trials=trials, rounds=rounds, num_images=num_images, steps=steps, guidance=guidance,
                             cap=cap, seed=seed, likes_per_round=likes, user=user, weights=weights)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--user") from None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("trials", total=trials)

        def on_trial(t, r):  # type: ignore[no-untyped-def]
            progress.update(task, advance=1, description=f"trial {t + 1}: {r.prompt!r} fb {r.feedback_images_to_match}"
                            f" / reroll {r.reroll_images_to_match} images")
            if trials_log is not None:
                with trials_log.open("a") as log:
                    log.write(json.dumps(trial_record(t, r)) + "\n")

        result = asyncio.run(evaluate_feedback(cfg, gateway, on_trial=on_trial))
    emit(result, as_json)


@eval_app.command("feedback-bound")
def eval_feedback_bound_cmd(
    trials: int = typer.Option(20_000, help="Simulated trials of the oracle (no model: this takes seconds)."),
    fabric_ratio: float = typer.Option(1.83, help="A FABRIC round's cost over a plain one (`philip bench refine`)."),
    shape_accuracy: float = typer.Option(0.851, help="P(right shape) when the prompt names it (`philip eval model`)."),
    cap: int = typer.Option(200, help="Image cap, as in `philip eval feedback`."),
    user: str = typer.Option("colour", help="Simulated user, as in `philip eval feedback --user`."),
    blind_trials: int = typer.Option(3_000, help="Simulated trials per setting of the blind-refiner sweep "
                                     "(32 settings; about a minute)."),
    keep: str | None = typer.Option(None, help="Also simulate one blind mechanism: P(child keeps fg,bg,shape), "
                                    "e.g. 0.6,0.69,0.47 (from `philip eval feedback`'s agreement fields)."),
    caption_colour_accuracy: float = typer.Option(1.0, help="P(right colour) for a full caption, for the prompt "
                                                  "explorer (`philip eval model --guidance G`)."),
    caption_shape_accuracy: float = typer.Option(0.851, help="P(right shape) for a full caption, for the prompt "
                                                 "explorer."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """The compute_ratio an oracle refiner that knows which attributes are right would reach, the best a
    blind one (FABRIC, seed steering: each attribute inherited with a fixed probability) could reach, and
    a prompt explorer's (full captions chosen from a posterior over the target; not built yet)."""
    from philip.evals.feedback_bound import BoundConfig, feedback_bound, parse_keep

    if fabric_ratio <= 0:
        raise typer.BadParameter(f"must be > 0, got {fabric_ratio}", param_hint="--fabric-ratio")
    try:
        keeps = parse_keep(keep) if keep is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--keep") from None
    try:  # the config checks its own fields, as FeedbackConfig does
        cfg = BoundConfig(trials=trials, cap=cap, shape_accuracy=shape_accuracy, user=user,
                          blind_trials=blind_trials, caption_colour_accuracy=caption_colour_accuracy,
                          caption_shape_accuracy=caption_shape_accuracy)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    emit(feedback_bound(cfg, fabric_ratio, keeps), as_json)


@eval_app.command("personalize")
def eval_personalize_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    method: str = typer.Option("lora", help="lora | textual_inversion."),
    steps: int = typer.Option(0, help="Training steps (0 = the method's default)."),
    seeds: int = typer.Option(6, help="Images per background colour, with and without the adapter."),
    colour: str = typer.Option("green", help="The star's colour (one of the palette's eight)."),
    save_dir: Path | None = typer.Option(None, help="Also write contact sheets (references, with, without) here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """Teach the model the held-out star from 5 renders; judge generations with and without the adapter."""
    import asyncio

    from rich.progress import Progress

    from philip.evals.personalize import PersonalizeConfig, evaluate_in_process
    from philip.logs import configure_logging

    configure_logging("console", "warning")
    cfg = PersonalizeConfig(method=method, steps=steps, seeds_per_colour=seeds, colour=colour)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training", total=None)

        def on_progress(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, description=f"training, loss {loss:.4f}")

        result = asyncio.run(evaluate_in_process(cfg, model_dir, save_dir, on_progress))
    emit(result, as_json)


@eval_app.command("references")
def eval_references_cmd(
    model_dir: Path = typer.Option(Path("models/philip-tiny"), help="Diffusers model folder."),
    seeds: int = typer.Option(6, help="Images per background colour, with and without the references."),
    references: int = typer.Option(5, min=1, max=7, help="Uploaded reference images of the subject."),
    weight: list[str] = typer.Option([], help="A FABRIC weight NAME=VALUE (default: the paper's), repeatable."),
    save_dir: Path | None = typer.Option(None, help="Also write contact sheets (references, with, without) here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object last."),
) -> None:
    """The held-out star from uploaded references and FABRIC alone (no training): subject rate with and without."""
    from philip.evals.references import evaluate_references
    from philip.feedback_weights import parse_weight_options

    try:
        weights = parse_weight_options(weight)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--weight") from None
    emit(evaluate_references(model_dir, references=references, seeds_per_colour=seeds, weights=weights,
                             save_dir=save_dir), as_json)


@eval_app.command("upscaler")
def eval_upscaler_cmd(
    path: Path = typer.Option(Path("models/philip-tiny-x4.onnx"), help="ONNX super-resolution model."),
    n: int = typer.Option(64, help="Held-out 256 px renders."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """PSNR of the upscaler vs bicubic on held-out renders downsampled to 64 px."""
    from philip.tiny.evaluate import evaluate_upscaler

    emit(evaluate_upscaler(path, n=n), as_json)


if __name__ == "__main__":
    app()
