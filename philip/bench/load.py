"""`philip bench load`: many scripted sessions at once (2 rounds + finalize each) against one gateway.

Every session starts a round, likes its first image (a FABRIC round on the refiner), then
finalizes (an upscale). A session is *lost* when it does not reach its final image; rounds are
timed from the request to the round's images, so queueing behind other sessions counts.
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
from philip.v1 import common_pb2, gateway_pb2_grpc

PROMPTS = ("a red circle on a blue background", "a circle", "a yellow square", "a shape on a black background")


@dataclass
class SessionRun:
    round_s: list[float] = field(default_factory=list)
    completed: bool = False
    error: str = ""


async def one_session(stub: gateway_pb2_grpc.GatewayStub, i: int, steps: int, timeout_s: float) -> SessionRun:
    run = SessionRun()
    params = common_pb2.GenerationParams(prompt=PROMPTS[i % len(PROMPTS)], num_images=4, steps=steps, seed=1000 + i)
    try:
        t0 = time.monotonic()
        session = await SessionClient.start(stub, params, timeout_s=timeout_s)
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
                     timeout_s: float = 900.0) -> dict[str, Any]:
    """Run ``sessions`` concurrent sessions against ``gateway`` or an in-process `serve all`
    (state in Redis at ``redis_url`` under a fresh key prefix, or the in-process store)."""
    store = None
    if gateway is None and redis_url is not None:
        from philip.store import RedisStore

        store = RedisStore(redis_url, prefix=f"philip-bench:{uuid.uuid4().hex}:")
    t0 = time.monotonic()
    try:
        async with gateway_stub(gateway, store=store) as stub:
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
