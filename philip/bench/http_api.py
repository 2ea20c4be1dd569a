"""`philip bench http`: the gateway's HTTP/JSON + SSE edge measured against its gRPC edge, in one run.

One `philip serve all` child process serves both edges (gRPC on ``port``, HTTP on ``http_port``);
every measurement is made from this process over 127.0.0.1 (httpx for HTTP, grpc.aio for gRPC).
Both sides ask for the same work (the same ``GenerationParams``: prompt, fixed seed, size, steps,
guidance, scheduler, ``preview_every``), each kind gets one warm-up, and the timed repeats alternate
the two edges (gRPC first on even repeats, HTTP first on odd ones), so a slow spell on a shared
machine touches both sides of a ratio. Medians are reported.

What is measured:

* ``http_overhead``: one generation through HTTP + SSE (``POST /v1/generations``, then
  ``GET /v1/jobs/{id}/events`` until ``result``) over the same generation through gRPC
  (``Gateway.Generate`` until ``result``), wall time from the first byte sent. ``max_pixel_diff``
  compares the two edges' images (the same work: 0).
* ``first_preview_ratio``: a session started by ``POST /v1/sessions`` and followed by
  ``GET /v1/sessions/{id}/events``, from the POST to the first ``preview`` event, over a session
  started by ``Gateway.Session`` and followed by ``Gateway.Subscribe``, from sending ``start`` to the
  first preview. Each session's round runs to its images (so the generator is idle for the next
  measurement), then the session is cancelled.
* ``sse_viewers``: ``viewers`` concurrent SSE readers of one session (started over HTTP, previews
  every step); once its round's images arrive it is finalized (an upscale). ``sse_viewers_final``
  counts the readers that got the ``final`` event (goal: all); ``sse_rss_growth_mb`` is the server
  process's VmRSS at its peak during the run (sampled every 50 ms) minus just before it. A run with
  one viewer goes first, so the round's and the upscaler's own memory are already in the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from philip.bench.generate import SamplingConfig
from philip.bench.http_report import max_pixel_diff, summarize
from philip.bench.server_process import ServerProcess, free_port
from philip.bench.sse_client import (
    HttpBenchError,
    bounded,
    checked,
    http_client,
    sse_events,
    wait_http_ready,
)

RSS_SAMPLE_S = 0.05


@dataclass(frozen=True)
class HttpBenchConfig(SamplingConfig):
    """What to measure and how often."""

    images: int = 4
    preview_every: int = 1
    repeats: int = 5
    viewers: int = 200
    threads: int = 1
    port: int = 0  # gRPC; 0 = a free port
    http_port: int = 0  # 0 = a free port
    startup_timeout_s: float = 180.0
    call_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.images <= 8:
            raise ValueError("images must be 1-8")
        if self.steps < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("steps, repeats and threads must be >= 1")
        if self.preview_every < 1:
            raise ValueError("preview_every must be >= 1 (first_preview_ratio needs previews)")
        if not 1 <= self.viewers <= 2000:
            raise ValueError("viewers must be 1-2000")


# ---- the two edges ------------------------------------------------------------------------------


@dataclass
class GenerationRun:
    total_s: float
    images: list[np.ndarray]


class Edges:
    """The same calls through HTTP (httpx) and gRPC (grpc.aio), timed."""

    def __init__(self, cfg: HttpBenchConfig, http: Any, stub: Any) -> None:
        from philip.v1 import common_pb2

        self.cfg = cfg
        self.http = http
        self.stub = stub
        self.params = common_pb2.GenerationParams(
            prompt=cfg.prompt, num_images=cfg.images, width=cfg.size, height=cfg.size, steps=cfg.steps,
            guidance=cfg.guidance, scheduler=cfg.scheduler, seed=cfg.seed, preview_every=cfg.preview_every,
        )
        self.params_json = json_format.MessageToDict(self.params)  # canonical JSON: the same message

    # generation: POST + job SSE vs Generate

    async def http_generate(self) -> GenerationRun:
        from philip.images import decode_png
        from philip.v1 import generator_pb2

        t0 = time.perf_counter()
        job = checked(await self.http.post("/v1/generations", json=self.params_json), 202)
        async with contextlib.aclosing(sse_events(self.http, f"/v1/jobs/{job['jobId']}/events")) as events:
            async for event in events:
                payload = event.json()  # what any client does with every event
                if event.name == "result":
                    message = json_format.ParseDict(payload, generator_pb2.GenerateEvent())
                    total_s = time.perf_counter() - t0
                    images = [np.asarray(decode_png(image.png)) for image in message.result.images]
                    if len(images) != self.cfg.images:
                        raise HttpBenchError(f"expected {self.cfg.images} images over HTTP, got {len(images)}")
                    return GenerationRun(total_s, images)
                if event.name in ("error", "cancelled", "stream_error"):
                    raise HttpBenchError(f"job {job['jobId']}: {event.name} {event.data[:300]}")
        raise HttpBenchError(f"job {job['jobId']}: the event stream ended without a result")

    async def grpc_generate(self) -> GenerationRun:
        from philip.clients.generate import stream_generation
        from philip.images import decode_png

        t0 = time.perf_counter()
        outcome = await stream_generation(self.stub, self.params, timeout_s=self.cfg.call_timeout_s)
        total_s = time.perf_counter() - t0
        if len(outcome.images) != self.cfg.images:
            raise HttpBenchError(f"expected {self.cfg.images} images over gRPC, got {len(outcome.images)} "
                                 f"(events {outcome.events})")
        return GenerationRun(total_s, [np.asarray(decode_png(image.png)) for image in outcome.images])

    # first preview of a session: POST + session SSE vs Session + Subscribe

    async def http_first_preview(self) -> float:
        t0 = time.perf_counter()
        snapshot = checked(await self.http.post("/v1/sessions", json={"params": self.params_json}), 201)
        session_id = snapshot["sessionId"]
        first: float | None = None
        async with contextlib.aclosing(sse_events(self.http, f"/v1/sessions/{session_id}/events")) as events:
            async for event in events:
                event.json()
                if event.name == "preview" and first is None:
                    first = event.at - t0
                elif event.name == "round_images":
                    break
                elif event.name in ("error", "cancelled", "final", "stream_error"):
                    raise HttpBenchError(f"session {session_id}: {event.name} {event.data[:300]}")
        checked(await self.http.post(f"/v1/sessions/{session_id}/cancel", json={}), 200)
        if first is None:
            raise HttpBenchError(f"session {session_id}: no preview over SSE")
        return first

    async def grpc_first_preview(self) -> float:
        from philip.clients.session import SessionClient
        from philip.v1 import gateway_pb2

        t0 = time.perf_counter()
        session = await SessionClient.start(self.stub, self.params, timeout_s=self.cfg.call_timeout_s)
        first: float | None = None
        async with session:
            call = self.stub.Subscribe(gateway_pb2.SubscribeRequest(session_id=session.session_id),
                                       timeout=self.cfg.call_timeout_s)
            try:
                async for message in call:
                    kind = message.session.WhichOneof("event")
                    if kind == "preview" and first is None:
                        first = time.perf_counter() - t0
                    elif kind == "round_images":
                        break
                    elif kind in ("error", "cancelled", "final"):
                        raise HttpBenchError(f"session {session.session_id}: {kind} over Subscribe")
            finally:
                call.cancel()
            await session.cancel()
        if first is None:
            raise HttpBenchError(f"session {session.session_id}: no preview over Subscribe")
        return first


# ---- many SSE viewers of one session ------------------------------------------------------------


@dataclass
class ViewersRun:
    viewers: int
    received_final: int
    rss_before_mb: float
    rss_peak_mb: float
    wall_s: float
    events_min: int
    events_max: int
    errors: list[str] = field(default_factory=list)


async def watch_viewers(edges: Edges, server: ServerProcess, viewers: int) -> ViewersRun:
    """``viewers`` concurrent readers of one session's SSE stream; the session runs a round, then is finalized."""
    cfg = edges.cfg
    http = edges.http
    rss_before = server.rss_mb()
    peak = rss_before
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop_sampling.is_set():
            peak = max(peak, server.rss_mb())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), RSS_SAMPLE_S)
        peak = max(peak, server.rss_mb())

    sampler = asyncio.get_running_loop().create_task(sample(), name="rss-sampler")
    t0 = time.perf_counter()
    try:
        snapshot = checked(await http.post("/v1/sessions", json={"params": edges.params_json}), 201)
        session_id = snapshot["sessionId"]
        chosen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def viewer() -> tuple[bool, int]:
            count = 0
            async with contextlib.aclosing(sse_events(http, f"/v1/sessions/{session_id}/events")) as events:
                async for event in events:
                    count += 1
                    payload = event.json()
                    if event.name == "round_images" and not chosen.done():
                        chosen.set_result(payload["roundImages"]["images"][0]["image"]["id"])
                    elif event.name == "final":
                        return True, count
                    elif event.name in ("error", "cancelled", "stream_error"):
                        raise HttpBenchError(f"{event.name} {event.data[:200]}")
            return False, count

        tasks = [asyncio.ensure_future(viewer()) for _ in range(viewers)]
        try:
            image_id = await bounded(asyncio.shield(chosen), cfg.call_timeout_s, "the viewers' round")
            checked(await http.post(f"/v1/sessions/{session_id}/finalize", json={"imageId": image_id}), 202)
            _done, pending = await asyncio.wait(tasks, timeout=cfg.call_timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall_s = time.perf_counter() - t0
    finally:
        stop_sampling.set()
        await sampler
    received, counts, errors = _tally(tasks, pending)
    return ViewersRun(viewers=viewers, received_final=received, rss_before_mb=rss_before, rss_peak_mb=peak,
                      wall_s=wall_s, events_min=min(counts, default=0), events_max=max(counts, default=0),
                      errors=sorted(errors)[:5])


def _tally(tasks: Sequence[asyncio.Task[tuple[bool, int]]],
           pending: AbstractSet[asyncio.Task[tuple[bool, int]]]) -> tuple[int, list[int], set[str]]:
    """(viewers that got the final, events each received, distinct errors) of the viewers' tasks."""
    received, counts, errors = 0, [], set[str]()
    for task in tasks:
        if task in pending:
            errors.add("timed out")
            continue
        exc = task.exception()
        if exc is not None:
            errors.add(f"{type(exc).__name__}: {exc}"[:200])
            continue
        got_final, count = task.result()
        received += got_final
        counts.append(count)
    return received, counts, errors


# ---- the whole run ------------------------------------------------------------------------------


def run_http_bench(cfg: HttpBenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start a server with both edges, measure everything, stop the server; returns the result object."""
    say = log or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="philip-bench-http-") as tmp:
        port, http_port = cfg.port or free_port(), cfg.http_port or free_port()
        while http_port == port:
            http_port = free_port()
        say(f"starting `philip serve all` on {cfg.model_dir} (gRPC :{port}, HTTP :{http_port}, "
            f"{cfg.threads} threads)")
        server = ServerProcess(cfg.model_dir, port, cfg.threads, Path(tmp), http_port=http_port)
        try:
            return asyncio.run(_measure(cfg, server, say))
        finally:
            server.stop()


async def _measure(cfg: HttpBenchConfig, server: ServerProcess, say: Callable[[str], None]) -> dict[str, Any]:
    from philip.clients.generate import gateway_channel
    from philip.v1 import gateway_pb2_grpc

    t0 = time.perf_counter()
    await server.wait_ready(cfg.startup_timeout_s)
    # Heartbeats come every 15 s, so a read that waits longer than a minute has lost its stream.
    async with http_client(f"http://{server.http_address}", cfg.viewers + 8, 60.0) as http, \
            gateway_channel(server.address) as channel:
        await wait_http_ready(http, server, cfg.startup_timeout_s)
        say(f"server ready in {time.perf_counter() - t0:.1f} s")
        edges = Edges(cfg, http, gateway_pb2_grpc.GatewayStub(channel))
        timeout = cfg.call_timeout_s

        say("warming up (one generation and one session on each edge)")
        await bounded(edges.grpc_generate(), timeout, "a gRPC generation")
        await bounded(edges.http_generate(), timeout, "an HTTP generation")
        await bounded(edges.grpc_first_preview(), timeout, "a gRPC session")
        await bounded(edges.http_first_preview(), timeout, "an HTTP session")

        http_s: list[float] = []
        grpc_s: list[float] = []
        diffs: list[int] = []
        for r in range(cfg.repeats):
            say(f"generation {r + 1}/{cfg.repeats} on both edges")
            runs: dict[str, GenerationRun] = {}
            for edge in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                call = edges.grpc_generate() if edge == "grpc" else edges.http_generate()
                runs[edge] = await bounded(call, timeout, f"a {edge} generation")
            grpc_s.append(runs["grpc"].total_s)
            http_s.append(runs["http"].total_s)
            diffs.append(max_pixel_diff(runs["grpc"].images, runs["http"].images))

        http_preview_s: list[float] = []
        grpc_preview_s: list[float] = []
        for r in range(cfg.repeats):
            say(f"session {r + 1}/{cfg.repeats} on both edges (first preview)")
            for edge in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                if edge == "grpc":
                    grpc_preview_s.append(await bounded(edges.grpc_first_preview(), timeout, "a gRPC session"))
                else:
                    http_preview_s.append(await bounded(edges.http_first_preview(), timeout, "an HTTP session"))

        say("one SSE viewer of a finalized session (warm-up)")
        warm = await watch_viewers(edges, server, 1)
        if warm.received_final != 1:
            raise HttpBenchError(f"the warm-up viewer got no final event: {warm.errors}")
        say(f"{cfg.viewers} SSE viewers of one finalized session")
        viewers = await watch_viewers(edges, server, cfg.viewers)
    return summarize(cfg, http_s=http_s, grpc_s=grpc_s, http_preview_s=http_preview_s,
                     grpc_preview_s=grpc_preview_s, viewers=viewers, max_pixel_diff=max(diffs))
