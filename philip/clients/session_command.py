"""`philip session`: the human-in-the-loop CLI (start or --resume, then the loop of session_cli.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    import sys

    from philip.clients.session_cli import Constraints
    from philip.feedback_weights import parse_weight_options
    from philip.v1 import common_pb2

    if (prompt is None) == (resume is None):
        console.print("[red]give a PROMPT to start a session, or --resume ID to continue one (not both)[/red]")
        raise typer.Exit(2)
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
    _run_reporting(_Plan(gateway, params, resume, weights, bool(weight) or explore is not None, timeout, out,
                         rounds, rounds is None and sys.stdin.isatty(), like, dislike, finalize, scale, constraints))


@dataclass
class _Plan:
    """What ``philip session`` was asked to do, checked."""

    gateway: str
    params: Any  # common_pb2.GenerationParams to start, or None to resume
    resume: str | None
    weights: dict[str, float]
    weights_given: bool
    timeout: float
    out: Path
    rounds: int | None
    interactive: bool
    like: list[str]
    dislike: list[str]
    finalize: str
    scale: int
    constraints: Any  # session_cli.Constraints
    session_id: str = ""  # set once the gateway has started or resumed the session


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, markup=False, highlight=False)  # paths stay on one line, verbatim


def _ask(question: str) -> str:
    import signal

    # asyncio.run's own SIGINT handler only cancels the task, which a blocking input() never notices:
    # at the prompt, Ctrl-C must raise at once.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return console.input(f"{question}\n> ")
    finally:
        signal.signal(signal.SIGINT, previous)


async def _drive(plan: _Plan) -> None:
    from philip.clients.generate import gateway_channel
    from philip.clients.session import SessionClient
    from philip.clients.session_cli import resume_point, run_session
    from philip.v1 import gateway_pb2_grpc, refiner_pb2

    async with gateway_channel(plan.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        if plan.params is not None:
            session = await SessionClient.start(stub, plan.params, timeout_s=plan.timeout, weights=(
                refiner_pb2.FeedbackWeights(**plan.weights) if plan.weights else None))
        else:
            session = await SessionClient.resume(stub, plan.resume or "", timeout_s=plan.timeout)
        plan.session_id = session.session_id
        _say(f"session {plan.session_id}")
        if session.snapshot is not None and session.snapshot.HasField("weights"):
            w = session.snapshot.weights
            _say("weights: " + ", ".join(f"{f.name} {v:g}" for f, v in w.ListFields())
                 + ("" if plan.weights_given else " (the served model's defaults)"))
        try:
            start = await resume_point(session, plan.out, _say) if plan.params is None else None
            rounds = plan.rounds if plan.rounds is not None else (None if plan.interactive else 1)
            final = start if isinstance(start, Path) else await run_session(
                session, out_dir=plan.out, rounds=rounds, likes=plan.like, dislikes=plan.dislike,
                finalize=plan.finalize, scale=plan.scale, ask=_ask if plan.interactive else None, say=_say,
                current=start, constraints=plan.constraints)
        finally:
            await session.close()
        if final is not None:
            console.print(f"[green]final image[/green] {final}", soft_wrap=True)


def _run_reporting(plan: _Plan) -> None:
    """Run the session; on an error or Ctrl-C, say what went wrong and how to come back to the session."""
    import asyncio

    import grpc

    from philip.clients.session import SessionError

    def resume_hint() -> None:
        if plan.session_id:
            _say(f"the session is kept: philip session --resume {plan.session_id} --gateway {plan.gateway}")

    try:
        asyncio.run(_drive(plan))
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
