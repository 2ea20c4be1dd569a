"""A split deployment on one machine: gateway, two generator replicas, a refiner and two
personalizers as separate OS processes (``philip serve <role>``), state in Redis, with the
trained philip-tiny models.

What Kubernetes gives the real deployment is played here by hand: the gateway dials both
generator replicas through one ``ipv4:host:port,host:port`` target (gRPC's static resolver; the
channel from ``philip.rpc.client.make_channel`` balances it round_robin and retries
UNAVAILABLE, as it does over a headless Service), and a pod's end is a signal to its process.

Needs Redis on 127.0.0.1:6379 (skipped otherwise). Slow: four processes load torch and the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from philip.bench.processes import GRACE_S, PHILIP, Service, gateway_service, health, wait_serving
from philip.bench.server_process import free_port
from philip.clients.generate import gateway_channel, stream_generation
from philip.clients.session import SessionClient, SessionError
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, generator_pb2, refiner_pb2

pytestmark = pytest.mark.slow

# Settings have no key prefix, so the cluster gets a Redis database of its own instead (the other
# store tests use 15). Every key it writes is under a fresh job/session id, so nothing collides.
REDIS_URL = "redis://127.0.0.1:6379/14"



def redis_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), timeout=1):
        return True
    return False


def start_gateway(name: str, generators: list[Service], refiner: Service, logs: Path,
                  personalizers: list[Service] | None = None) -> Service:
    gateway = gateway_service(name, generators, refiner, logs, REDIS_URL, personalizers)
    gateway.start()
    return gateway


@dataclass
class Cluster:
    gateway: Service
    generators: list[Service]
    refiner: Service
    personalizers: list[Service]
    logs: Path

    def submitted(self) -> list[int]:
        """Generation jobs each generator replica has taken so far."""
        return [len(g.events("job.submitted")) for g in self.generators]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not redis_up():
        pytest.skip("needs Redis on 127.0.0.1:6379")
    if not PHILIP.is_file():
        pytest.skip(f"{PHILIP} not installed")
    logs = tmp_path_factory.mktemp("cluster-logs")
    generators = [Service(f"generator-{i}", "generator", free_port(), logs / f"generator-{i}.log", REDIS_URL)
                  for i in (1, 2)]
    refiner = Service("refiner", "refiner", free_port(), logs / "refiner.log", REDIS_URL)
    # Personalizers share the adapters folder (a ReadWriteMany volume in Kubernetes); a dead
    # worker's job is reclaimed after 3 s instead of the default minute.
    shared = {"PHILIP_ADAPTERS_DIR": str(logs / "adapters"), "PHILIP_TRAIN_RECLAIM_IDLE_S": "3",
              "PHILIP_TRAIN_CHECKPOINT_EVERY": "5"}
    personalizers = [Service(f"personalizer-{i}", "personalizer", free_port(), logs / f"personalizer-{i}.log",
                             REDIS_URL, env=shared) for i in (1, 2)]
    for service in [*generators, refiner]:
        service.env = {**service.env, "PHILIP_ADAPTERS_DIR": shared["PHILIP_ADAPTERS_DIR"]}
    workers = [*generators, refiner, *personalizers]
    for worker in workers:
        worker.start()
    gateway = start_gateway("gateway", generators, refiner, logs, personalizers)
    everything = [*workers, gateway]
    try:
        asyncio.run(wait_serving(everything))
        yield Cluster(gateway, generators, refiner, personalizers, logs)
    finally:
        for service in [gateway, *workers]:  # like a rollout: the gateway first, then the workers
            service.stop()


def params(steps: int = 4, images: int = 2, seed: int = 7) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(prompt="a red circle on a blue background", num_images=images,
                                       steps=steps, seed=seed)


async def test_generations_spread_over_both_generator_replicas(cluster: Cluster) -> None:
    before = cluster.submitted()
    async with gateway_channel(cluster.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for seed in range(4):
            outcome = await stream_generation(stub, params(seed=seed), timeout_s=120)
            assert len(outcome.images) == 2
    served = [after - b for after, b in zip(cluster.submitted(), before, strict=True)]
    assert sum(served) == 4 and all(n >= 1 for n in served), f"jobs per replica: {served}"


async def test_sigterm_drains_an_in_flight_stream_before_the_gateway_exits(cluster: Cluster) -> None:
    # A gateway of its own, since this one is stopped.
    gateway = start_gateway("gateway-drain", cluster.generators, cluster.refiner, cluster.logs)
    try:
        await wait_serving([gateway])
        started = asyncio.Event()
        async with gateway_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            def on_event(event: generator_pb2.GenerateEvent) -> None:
                if event.WhichOneof("event") == "progress":
                    started.set()

            call = asyncio.create_task(stream_generation(stub, params(steps=40, images=4), on_event, timeout_s=120))
            await asyncio.wait_for(started.wait(), 60)
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.5)
            assert await health(gateway.address) != "SERVING", "health flips first, so balancers stop routing"
            outcome = await call  # drained: a SIGTERM must not cut the stream
        assert len(outcome.images) == 4, outcome.events
        returncode = await asyncio.to_thread(gateway.proc.wait, 2 * GRACE_S + 15)
        assert returncode == 0, gateway.tail()
        assert time.monotonic() - signalled < 2 * GRACE_S + 15
    finally:
        gateway.stop(signal.SIGKILL)


async def test_session_continues_on_the_other_replica_when_one_dies(cluster: Cluster) -> None:
    async with gateway_channel(cluster.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        # explore=0: rounds with nothing liked stay plain generator rounds (philip-tiny's default explores).
        session = await SessionClient.start(stub, params(steps=30), timeout_s=600,
                                            weights=refiner_pb2.FeedbackWeights(explore=0.0))
        async with session:
            first = await session.next_round()  # a plain round: a generator replica
            before = cluster.submitted()
            # Round 2, also plain (nothing liked yet): kill the replica that takes it, mid-round.
            round_two = asyncio.create_task(session.feedback([], []))
            deadline = time.monotonic() + 60
            while cluster.submitted() == before and not round_two.done():
                assert time.monotonic() < deadline, "no replica took round 2"
                await asyncio.sleep(0.05)
            busy = [i for i, (a, b) in enumerate(zip(cluster.submitted(), before, strict=True)) if a > b]
            victim = cluster.generators[busy[0] if busy else 0]
            survivor = cluster.generators[1 - cluster.generators.index(victim)]
            mid_round = len(victim.events("job.submitted")) > len(victim.events("job.finished"))
            victim.stop(signal.SIGKILL)  # a node lost, not a graceful drain
            try:
                await round_two
                failed = False
            except SessionError as exc:
                # gRPC never retries a stream that already had a response, so the gateway runs the
                # round once more itself (session.round_retry); should that fail too, the error
                # reaches the client, whose next feedback runs the round again.
                assert exc.code == "UNAVAILABLE", exc
                failed = True
            if mid_round and not failed:
                assert cluster.gateway.events("session.round_retry"), "round 2 ran again on the survivor"
            survivor_before = len(survivor.events("job.submitted"))
            again = await session.feedback([], [])  # plain round -> the surviving replica
            third = await session.feedback([first.images[0].image.id], [])  # refiner
            final = await session.finalize(third.images[0].image.id)  # refiner's upscale
            assert again.images and final.image.png
            assert len(survivor.events("job.submitted")) > survivor_before


async def test_a_personalizer_killed_mid_training_is_finished_by_another(cluster: Cluster) -> None:
    """The personalizer training a job (created through the gateway) is SIGKILLed after a
    checkpoint; the other reclaims the job once the heartbeat stops and resumes from the checkpoint."""
    from philip.v1 import personalizer_pb2 as pb
    from tests.personalizer.conftest import reference_pngs

    token = "zq" + "".join(chr(ord("a") + int(c, 16) % 26) for c in os.urandom(4).hex())
    async with gateway_channel(cluster.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        job = await stub.CreateAdapter(pb.CreateAdapterRequest(
            reference_images=reference_pngs(5), token=token, class_word="shape", steps=30))
        async for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=300):
            if event.WhichOneof("event") == "progress" and event.progress.step >= 8:
                break  # past the checkpoint at step 5
        workers = cluster.personalizers
        trainers = [i for i, w in enumerate(workers) if w.events("training.started")]
        assert len(trainers) == 1, "exactly one worker took the job"
        victim, survivor = workers[trainers[0]], workers[1 - trainers[0]]
        victim.stop(signal.SIGKILL)
        # The gateway's channel round-robins; after the kill only the survivor answers.
        events = [e async for e in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=300)]
        adapter_id = events[-1].job.adapter_id
        listed = await stub.ListAdapters(pb.ListAdaptersRequest())
    done = events[-1].job
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, (done, survivor.tail())
    assert done.attempts == 2 and adapter_id in [a.adapter_id for a in listed.adapters]
    resumed = [e.progress.resumed_from for e in events
               if e.WhichOneof("event") == "progress" and e.progress.resumed_from]
    assert resumed and resumed[0] >= 5, "the survivor resumed from the dead worker's checkpoint"
    steps = {e.progress.step for e in events if e.WhichOneof("event") == "progress"}
    assert steps == set(range(1, 31)), "every step is in the job's history, across both workers"
    assert survivor.events("worker.reclaimed")
    assert (cluster.logs / "adapters" / adapter_id / "adapter.json").is_file()


async def sse_until(client: httpx.AsyncClient, path: str, last: str, wanted: str) -> tuple[str, dict[str, object]]:
    """Read the SSE stream at ``path`` after event ``last`` until an event named ``wanted``: (its id, data)."""
    event_id, name = last, ""
    async with client.stream("GET", path, headers={"Last-Event-ID": last}, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == wanted:
                return event_id, json.loads(line[6:])
    raise AssertionError(f"the stream ended before {wanted}")


async def test_a_session_over_http_on_the_split_gateway(cluster: Cluster) -> None:
    """The gateway process's HTTP edge drives the same session domain over the split services:
    round 1 on a generator replica, round 2 (a like) on the refiner, events resumed by Last-Event-ID."""
    base = f"http://127.0.0.1:{cluster.gateway.env['PHILIP_HTTP_PORT']}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        assert (await client.get("/readyz")).json() == {"status": "ok"}
        started = await client.post("/v1/sessions", json={"params": {"prompt": "a red circle on a blue background",
                                                                     "numImages": 2, "steps": 4, "seed": "7"}})
        assert started.status_code == 201, started.text
        session_id = started.json()["sessionId"]
        last, first = await sse_until(client, f"/v1/sessions/{session_id}/events", "0-0", "round_images")
        images = first["roundImages"]["images"]  # type: ignore[index]
        liked = images[0]["image"]["id"]
        reply = await client.post(f"/v1/sessions/{session_id}/feedback", json={"likedImageIds": [liked]})
        assert reply.status_code == 200 and reply.json()["runningRound"] == 2, reply.text
        _, second = await sse_until(client, f"/v1/sessions/{session_id}/events", last, "round_images")
        assert second["round"] == 2 and len(second["roundImages"]["images"]) == 2  # type: ignore[index]
        png = await client.get(f"/v1/images/{liked}.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    async with gateway_channel(cluster.gateway.address) as channel:  # the same session over gRPC
        snapshot = await gateway_pb2_grpc.GatewayStub(channel).GetSession(
            gateway_pb2.GetSessionRequest(session_id=session_id))
    assert [r.round for r in snapshot.rounds] == [1, 2]
