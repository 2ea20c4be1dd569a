"""`philip bench soak`: scripted sessions and training jobs through faults, on a split deployment.

Two gateway replicas, two generators, a refiner and a personalizer as separate processes on one
private redis-server (AOF on). While the clients run (``philip/bench/soak_clients.py``), the soak
restarts Redis once, then SIGKILLs one gateway and one generator and starts them again. Every session
must complete (resuming through each fault), every training job end with one adapter and no other
folder, and no call answer INTERNAL (HTTP 500) nor any service log a crash.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from philip.bench.processes import RedisServer, Service, gateway_service, wait_serving
from philip.bench.server_process import free_port
from philip.bench.soak_clients import Edges, SessionRun, TrainingRun, scripted_session, training_job

CRASH_EVENTS = ("rpc.internal_error", "session.round_crashed", "session.finalize_crashed")
# Faults at these fractions of the sessions done: Redis restarted, a gateway killed, a generator killed.
FAULT_AT = (0.15, 0.4, 0.65)


@dataclass
class Deployment:
    redis: RedisServer
    gateways: list[Service]
    generators: list[Service]
    workers: list[Service]  # generators, refiner, personalizer
    adapters: Path

    @property
    def services(self) -> list[Service]:
        return [*self.workers, *self.gateways]

    def http_bases(self) -> list[str]:
        return [f"http://127.0.0.1:{g.env['PHILIP_HTTP_PORT']}" for g in self.gateways]


def deploy(folder: Path) -> Deployment:
    """Start everything (not yet waited for); ``stop`` undoes it."""
    redis = RedisServer(folder / "redis")
    redis.start()
    url, logs, adapters = redis.url, folder / "logs", folder / "adapters"
    logs.mkdir(parents=True, exist_ok=True)
    # Faults are found fast: a silent replica's round is failed after 5 s, a worker's job taken after 5 s.
    common = {"PHILIP_ADAPTERS_DIR": str(adapters), "PHILIP_SESSION_STALE_S": "5", "PHILIP_GRACE_S": "2",
              "PHILIP_TRAIN_RECLAIM_IDLE_S": "5", "PHILIP_TRAIN_CHECKPOINT_EVERY": "5"}
    generators = [Service(f"generator-{i}", "generator", free_port(), logs / f"generator-{i}.log", url, dict(common))
                  for i in (1, 2)]
    refiner = Service("refiner", "refiner", free_port(), logs / "refiner.log", url, dict(common))
    personalizer = Service("personalizer", "personalizer", free_port(), logs / "personalizer.log", url, dict(common))
    workers = [*generators, refiner, personalizer]
    gateways = [gateway_service(f"gateway-{i}", generators, refiner, logs, url, [personalizer], **common)
                for i in (1, 2)]
    for service in [*workers, *gateways]:
        service.start()
    return Deployment(redis, gateways, generators, workers, adapters)


def stop(deployment: Deployment) -> None:
    for service in deployment.services:
        service.stop(signal.SIGTERM, timeout_s=30)
    deployment.redis.stop()


async def _faults(deployment: Deployment, done: Callable[[], float], log: list[dict[str, Any]]) -> None:
    """Each fault once its share of the sessions is done; a killed process comes back on its own port."""
    async def at(fraction: float, what: str, act: Callable[[], Awaitable[None]]) -> None:
        while done() < fraction:
            await asyncio.sleep(0.2)
        began, share = time.monotonic(), done()
        await act()
        log.append({"fault": what, "at_done": round(share, 2), "recovered_s": round(time.monotonic() - began, 1)})

    async def restart_redis() -> None:
        await asyncio.to_thread(deployment.redis.restart, 1.0)

    async def kill_and_restart(service: Service) -> None:
        service.stop(signal.SIGKILL)
        await asyncio.sleep(2.0)
        service.start()
        await wait_serving([service])

    # Each on its own clock: the generator dies while the gateway is still coming back, as faults do.
    await asyncio.gather(at(FAULT_AT[0], "redis restarted", restart_redis),
                         at(FAULT_AT[1], "gateway-2 SIGKILLed", lambda: kill_and_restart(deployment.gateways[1])),
                         at(FAULT_AT[2], "generator-1 SIGKILLed", lambda: kill_and_restart(deployment.generators[0])))


async def run_soak(sessions: int = 100, jobs: int = 5, *, concurrency: int = 12, steps: int = 4,
                   train_steps: int = 15, folder: Path | None = None) -> dict[str, Any]:
    """The soak's counts: sessions completed and lost, INTERNAL answers, adapters and orphans, round p95."""
    with tempfile.TemporaryDirectory(prefix="philip-soak-") as scratch:
        deployment = deploy(folder or Path(scratch))
        try:
            await wait_serving(deployment.services)
            return await _drive(deployment, sessions, jobs, concurrency, steps, train_steps)
        finally:
            await asyncio.to_thread(stop, deployment)


async def _drive(deployment: Deployment, sessions: int, jobs: int, concurrency: int, steps: int,
                 train_steps: int) -> dict[str, Any]:
    began = time.monotonic()
    edges, run_id, finished = Edges(deployment.http_bases()), uuid.uuid4().hex[:8], [0]
    gate = asyncio.Semaphore(concurrency)

    async def one(k: int) -> SessionRun:
        async with gate:
            result = await scripted_session(edges, k, run_id, steps)
        finished[0] += 1
        return result

    faults: list[dict[str, Any]] = []
    try:
        fault_task = asyncio.create_task(_faults(deployment, lambda: finished[0] / sessions, faults))
        trainings = asyncio.gather(*[training_job(edges, k, run_id, train_steps) for k in range(jobs)])
        runs = await asyncio.gather(*[one(k) for k in range(sessions)])
        trained = await trainings
        await fault_task
    finally:
        await edges.close()
    return _report(deployment, runs, trained, faults, edges, time.monotonic() - began)


def _report(deployment: Deployment, runs: list[SessionRun], trained: list[TrainingRun],
            faults: list[dict[str, Any]], edges: Edges, wall_s: float) -> dict[str, Any]:
    rounds = sorted(t for r in runs for t in r.round_s)
    adapters = {t.adapter_id for t in trained if t.state == "JOB_STATE_SUCCEEDED"}
    folders = {p.name for p in deployment.adapters.iterdir() if not p.name.startswith(".")} \
        if deployment.adapters.is_dir() else set()
    crashes = sum(len(s.events(name)) for s in deployment.services for name in CRASH_EVENTS)
    return {
        "sessions": len(runs), "completed": sum(r.completed for r in runs),
        "lost": sum(not r.completed for r in runs), "internal_errors": edges.internal_errors + crashes,
        "p95_round_s": round(rounds[int(0.95 * (len(rounds) - 1))], 2) if rounds else None,
        "p50_round_s": round(statistics.median(rounds), 2) if rounds else None,
        "resent": sum(r.resent for r in runs), "client_retries": edges.retries,
        "key_waits": edges.key_waits,
        "training_jobs": len(trained), "adapters": len(adapters), "orphan_folders": len(folders - adapters),
        "missing_folders": len(adapters - folders), "training_attempts": [t.attempts for t in trained],
        "faults": faults, "wall_s": round(wall_s, 1),
        "errors": [r.error for r in runs if r.error][:5] + [t.error or t.state for t in trained
                                                            if t.state != "JOB_STATE_SUCCEEDED"][:5],
    }
