"""`philip bench load`: many scripted sessions at once (2 rounds + finalize each) against one gateway.

Every session starts a round, likes its first image (a FABRIC round on the refiner, at the paper's
weights), then finalizes (an upscale). A session is *lost* when it does not reach its final image; rounds
are timed from the request to the round's images, so queueing behind other sessions counts.

Against the machine's physical limit: ``ideal_round_s`` = the images of all concurrent rounds / the bare
pipeline's images per second at its best batch size (measured here, same steps and size), and
``p95_vs_ideal`` = p95_round_s / ideal_round_s. :func:`compare_load` runs the in-process services with
the refiner one round at a time (``refine_max_batch=1``, as before batching) and batched, at several
concurrencies.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from philip.clients.embedded import gateway_stub
from philip.clients.session import SessionClient, SessionError
from philip.v1 import common_pb2, gateway_pb2_grpc, refiner_pb2

PROMPTS = ("a red circle on a blue background", "a circle", "a yellow square", "a shape on a black background")
IMAGES = 4  # per round
FABRIC = refiner_pb2.FeedbackWeights(explore=0.0, max_weight=0.8, min_weight=0.1)  # round 2: a FABRIC round


@dataclass
class SessionRun:
    round_s: list[float] = field(default_factory=list)
    completed: bool = False
    error: str = ""


async def one_session(stub: gateway_pb2_grpc.GatewayStub, i: int, steps: int, timeout_s: float) -> SessionRun:
    run = SessionRun()
    params = common_pb2.GenerationParams(prompt=PROMPTS[i % len(PROMPTS)], num_images=IMAGES, steps=steps,
                                         seed=1000 + i)
    try:
        t0 = time.monotonic()
        session = await SessionClient.start(stub, params, timeout_s=timeout_s, weights=FABRIC)
        async with session:
            first = await session.next_round()
            run.round_s.append(time.monotonic() - t0)
            t1 = time.monotonic()
            second = await session.feedback([first.images[0].image.id], [])
            run.round_s.append(time.monotonic() - t1)
            final = await session.finalize(second.images[0].image.id)
            run.completed = bool(final.image.png)
    except (SessionError, TimeoutError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


async def bench_load(sessions: int = 50, steps: int = 8, gateway: str | None = None, redis_url: str | None = None,
                     timeout_s: float = 900.0, refine_max_batch: int | None = None) -> dict[str, Any]:
    """Run ``sessions`` concurrent sessions against ``gateway`` or an in-process `serve all`
    (state in Redis at ``redis_url`` under a fresh key prefix, or the in-process store; ``refine_max_batch``
    overrides its refiner's batch size)."""
    settings = None
    if gateway is None and refine_max_batch is not None:
        from philip.settings import Settings

        settings = Settings.from_env(port=0, http_port=0, host="127.0.0.1", refine_max_batch=refine_max_batch)
    store = None
    if gateway is None and redis_url is not None:
        from philip.store import RedisStore

        store = RedisStore(redis_url, prefix=f"philip-bench:{uuid.uuid4().hex}:")
    t0 = time.monotonic()
    try:
        async with gateway_stub(gateway, store=store, settings=settings) as stub:
            runs = await asyncio.gather(*(one_session(stub, i, steps, timeout_s) for i in range(sessions)))
    finally:
        if store is not None:
            await store.close()
    rounds = [s for run in runs for s in run.round_s]
    errors = sorted({run.error for run in runs if run.error})
    return {
        "sessions": sessions, "completed": sum(run.completed for run in runs),
        "lost": sum(not run.completed for run in runs),
        "p50_round_s": round(_percentile(rounds, 50), 2), "p95_round_s": round(_percentile(rounds, 95), 2),
        "wall_s": round(time.monotonic() - t0, 1), "steps": steps, "errors": errors[:5],
    }


def pipeline_images_per_s(steps: int, model_dir: str = "models/philip-tiny", batches: tuple[int, ...] = (1, 2, 4, 8),
                          guidance: float = 5.0, threads: int | None = None) -> tuple[float, int]:
    """The bare pipeline's best images per second (plain CFG rounds at ``steps``, on ``threads`` torch threads) and
    the batch size that gave it."""
    import torch

    from philip.models.pipelines import load_pipeline

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _best_rate(load_pipeline(model_dir), steps, batches, guidance)
    finally:
        torch.set_num_threads(previous)


def _best_rate(pipe: Any, steps: int, batches: tuple[int, ...], guidance: float) -> tuple[float, int]:
    import torch

    from philip.models.pipelines import make_scheduler, native_size

    pipe.scheduler = make_scheduler(pipe, "dpm++")
    size = native_size(pipe)
    best = (0.0, 1)
    with torch.inference_mode():
        for n in batches:
            def call(n: int = n) -> None:
                pipe(["a circle"] * n, num_inference_steps=steps, guidance_scale=guidance, width=size, height=size,
                     generator=[torch.Generator().manual_seed(i) for i in range(n)], output_type="latent")

            call()  # warm-up
            t0 = time.perf_counter()
            repeats = max(1, 16 // n)
            for _ in range(repeats):
                call()
            ips = n * repeats / (time.perf_counter() - t0)
            best = max(best, (ips, n))
    return best


async def compare_load(concurrencies: tuple[int, ...], steps: int = 8, redis_url: str | None = None,
                       timeout_s: float = 900.0) -> dict[str, Any]:
    """At each concurrency, the refiner one round at a time vs batched; p95 against the physical limit.

    The limit is the bare pipeline at its best batch size on the torch threads each in-process service runs
    with (``PHILIP_THREADS``, default every core but one): a session's round runs on one service's pipeline.
    ``*_all_cores`` is the same against one pipeline using every core (no service runs so here, since the
    generator and the refiner each hold a pipeline)."""
    import os

    from philip.settings import Settings

    threads = Settings.from_env().server.torch_threads
    ips, best_batch = await asyncio.to_thread(pipeline_images_per_s, steps, threads=threads)
    ips_all, _ = await asyncio.to_thread(pipeline_images_per_s, steps, threads=os.cpu_count() or 1)
    rows = []
    for n in concurrencies:
        # ideal_round_s: one round of every session at the bare pipeline's best rate; the bench's sessions have two
        # rounds each in flight together, so its wall time is also set against all their images (plain cost).
        row: dict[str, Any] = {"sessions": n, "ideal_round_s": round(n * IMAGES / ips, 2),
                               "ideal_round_s_all_cores": round(n * IMAGES / ips_all, 2),
                               "ideal_wall_s": round(2 * n * IMAGES / ips, 2)}
        for name, batch in (("one_at_a_time", 1), ("batched", 0)):
            result = await bench_load(n, steps, None, redis_url, timeout_s, refine_max_batch=batch)
            row[name] = {k: result[k] for k in ("completed", "lost", "p50_round_s", "p95_round_s", "wall_s")}
            row[name]["p95_vs_ideal"] = round(result["p95_round_s"] / row["ideal_round_s"], 2)
            row[name]["p95_vs_ideal_all_cores"] = round(result["p95_round_s"] / row["ideal_round_s_all_cores"], 2)
            row[name]["wall_vs_ideal"] = round(result["wall_s"] / row["ideal_wall_s"], 2)
        row["batched_not_slower"] = row["batched"]["p95_round_s"] <= row["one_at_a_time"]["p95_round_s"] * 1.05
        rows.append(row)
    return {"steps": steps, "images_per_round": IMAGES, "service_threads": threads,
            "pipeline_images_per_s": round(ips, 2), "pipeline_images_per_s_all_cores": round(ips_all, 2),
            "best_batch": best_batch, "by_concurrency": rows,
            "batched_never_slower": all(r["batched_not_slower"] for r in rows)}

