"""Stream one generation through the gateway and collect its events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from philip.images import contact_sheet, decode_png
from philip.rpc.auth import client_interceptors
from philip.rpc.client import make_channel
from philip.v1 import common_pb2, gateway_pb2_grpc, generator_pb2

GATEWAY_SERVICE = "philip.v1.Gateway"


@dataclass
class GenerationOutcome:
    """What one Generate stream delivered."""

    job_id: str = ""
    images: list[common_pb2.Image] = field(default_factory=list)
    previews: int = 0
    first_preview_s: float | None = None
    cancelled: bool = False
    events: list[str] = field(default_factory=list)


async def _requests(params: common_pb2.GenerationParams) -> AsyncIterator[generator_pb2.GenerateClientMessage]:
    yield generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=params))


async def stream_generation(
    stub: gateway_pb2_grpc.GatewayStub,
    params: common_pb2.GenerationParams,
    on_event: Callable[[generator_pb2.GenerateEvent], None] | None = None,
    timeout_s: float | None = None,
) -> GenerationOutcome:
    """Run one Generate call to completion; raises grpc.aio.AioRpcError on a failed status."""
    import time

    t0 = time.perf_counter()
    outcome = GenerationOutcome()
    call = stub.Generate(_requests(params), timeout=timeout_s)
    async for event in call:
        kind = event.WhichOneof("event")
        outcome.job_id = event.job_id
        outcome.events.append(kind or "")
        if kind == "preview":
            outcome.previews += 1
            if outcome.first_preview_s is None:
                outcome.first_preview_s = time.perf_counter() - t0
        elif kind == "result":
            outcome.images = list(event.result.images)
        elif kind == "cancelled":
            outcome.cancelled = True
        if on_event is not None:
            on_event(event)
    return outcome


def gateway_channel(target: str, api_key: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway that sends ``api_key`` (or PHILIP_API_KEY, if set) on every call."""
    return make_channel(target, [GATEWAY_SERVICE], interceptors=client_interceptors(api_key))


def save_outcome(outcome: GenerationOutcome, out_dir: Path, columns: int = 4) -> tuple[list[Path], Path]:
    """Write every image as PNG plus a numbered contact sheet; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for img in outcome.images:
        path = out_dir / f"{outcome.job_id}_{img.index + 1}_seed{img.seed}.png"
        path.write_bytes(img.png)
        paths.append(path)
    sheet_path = out_dir / f"{outcome.job_id}_sheet.png"
    contact_sheet([decode_png(i.png) for i in outcome.images], columns=columns, labels=True).save(sheet_path)
    return paths, sheet_path


def progress_reporter(progress: Any) -> Callable[[Any], None]:
    """A Generate stream's events as a rich progress bar (its total from the first progress event: the model's
    default steps when the request left them unset)."""
    task = progress.add_task("queued", total=None)

    def on_event(event: Any) -> None:
        kind = event.WhichOneof("event")
        if kind == "queued":
            progress.update(task, description=f"queued (position {event.queued.position})")
        elif kind == "progress":
            progress.update(task, completed=event.progress.step, total=event.progress.total_steps,
                            description="denoising")
        elif kind == "preview":
            progress.update(task, description=f"denoising (preview at step {event.preview.step})")

    return on_event
