"""`philip session`: the human-in-the-loop CLI (start or --resume, then the loop of session_cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from philip.clients.output import console


def session_cmd(
    prompt: str | None = typer.Argument(None, help="What to draw (omit with --resume)."),
    gateway: str = typer.Option("127.0.0.1:50051", help="Gateway address host:port."),
    resume: str | None = typer.Option(None, help="Reattach to a session by id (ses_...) and go on from its state."),
    n: int = typer.Option(4, "-n", "--num-images", help="Images per round (1-8)."),
    steps: int = typer.Option(8, help="Denoising steps."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance (> 1 for dislikes to matter)."),
    seed: int | None = typer.Option(None, help="Base seed (round r, image i: seed + (r-1)*1000 + i)."),
    negative: str = typer.Option("", help="Negative prompt."),
    like: list[str] = typer.Option([], help="Per round, image numbers to like, e.g. 1,3 (repeat per round)."),
    dislike: list[str] = typer.Option([], help="Per round, image numbers to dislike, e.g. 2 (repeat per round)."),
    rounds: int | None = typer.Option(None, help="Stop after this round and finalize (scripted use)."),
    finalize: str = typer.Option("best", help="Image of the last round to upscale: best | N."),
    scale: int = typer.Option(0, help="Upscale factor; 0 = the upscaler's own (x4)."),
    explore: float | None = typer.Option(None, min=0.0, max=1.0, help="Share of each round's images drawn from "
                                         "prompts the refiner asks for, learned from your picks (needs a vocabulary); "
                                         "absent = the served model's default."),
    weight: list[str] = typer.Option([], help="A feedback weight NAME=VALUE (start, end, min_weight, max_weight, "
                                     "neg_scale, diversity, explore), repeatable; unset ones take the served model's "
                                     "defaults."),
    pin: list[str] = typer.Option([], help="Exploration: always ask for SLOT=VALUE (e.g. bg=blue), repeatable."),
    ban: list[str] = typer.Option([], help="Exploration: never ask for SLOT=VALUE, repeatable."),
    out: Path = typer.Option(Path("out/session"), help="Folder for contact sheets and the final image."),
    timeout: float = typer.Option(1800.0, help="Deadline for the whole session, seconds."),
) -> None:
    """Human in the loop: rounds as numbered contact sheets, like/dislike, then upscale the chosen one."""
    import asyncio
    import signal
    import sys

    import grpc

    from philip.clients.generate import gateway_channel
    from philip.clients.session import SessionClient, SessionError
    from philip.clients.session_cli import Constraints, resume_point, run_session
    from philip.feedback_weights import parse_weight_options
    from philip.v1 import common_pb2, gateway_pb2_grpc, refiner_pb2

    if (prompt is None) == (resume is None):
        console.print("[red]give a PROMPT to start a session, or --resume ID to continue one (not both)[/red]")
        raise typer.Exit(2)
    interactive = rounds is None and sys.stdin.isatty()
    params = None
    if prompt is not None:
        params = common_pb2.GenerationParams(prompt=prompt, negative_prompt=negative, num_images=n, steps=steps,
                                             guidance=guidance)
        if seed is not None:
            params.seed = seed
    try:
        weights = parse_weight_options(weight) | ({"explore": explore} if explore is not None else {})
        constraints = Constraints.from_options(pin, ban)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    session_id = ""  # set once the gateway has started or resumed the session

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False)  # paths stay on one line, verbatim

    def ask(question: str) -> str:
        # asyncio.run's own SIGINT handler only cancels the task, which a blocking input() never notices:
        # at the prompt, Ctrl-C must raise at once.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return console.input(f"{question}\n> ")
        finally:
            signal.signal(signal.SIGINT, previous)

    async def run() -> None:
        nonlocal session_id
        async with gateway_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            if params is not None:
                session = await SessionClient.start(stub, params, timeout_s=timeout, weights=(
                    refiner_pb2.FeedbackWeights(**weights) if weights else None))
            else:
                session = await SessionClient.resume(stub, resume or "", timeout_s=timeout)
            session_id = session.session_id
            say(f"session {session_id}")
            if session.snapshot is not None and session.snapshot.HasField("weights"):
                w = session.snapshot.weights
                say("weights: " + ", ".join(f"{f.name} {v:g}" for f, v in w.ListFields())
                    + ("" if weight or explore is not None else " (the served model's defaults)"))
            try:
                start = await resume_point(session, out, say) if params is None else None
                final = start if isinstance(start, Path) else await run_session(
                    session, out_dir=out, rounds=rounds if rounds is not None else (None if interactive else 1),
                    likes=like, dislikes=dislike, finalize=finalize, scale=scale,
                    ask=ask if interactive else None, say=say, current=start, constraints=constraints)
            finally:
                await session.close()
            if final is not None:
                console.print(f"[green]final image[/green] {final}", soft_wrap=True)

    def resume_hint() -> None:
        if session_id:
            say(f"the session is kept: philip session --resume {session_id} --gateway {gateway}")

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        resume_hint()
        raise typer.Exit(130) from None
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        resume_hint()
        raise typer.Exit(2) from None
    except SessionError as err:
        console.print(f"[red]{err.code}[/red]: {err.message}")
        resume_hint()
        raise typer.Exit(1) from None
    except grpc.aio.AioRpcError as err:
        console.print(f"[red]{err.code().name}[/red]: {err.details()}")
        resume_hint()
        raise typer.Exit(2) from None
