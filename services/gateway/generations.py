"""Generation jobs that outlive the request that started them (HTTP ``POST /v1/generations``).

A gRPC client holds its own Generate stream; an HTTP client gets a job id and goes away. Here the
gateway holds the generator stream in a task of its own (with the tenant's generation quota for the
job's whole life) and follows it to its end; the job's events are read from the store like any
job's (``follow_job_entries``). Cancel writes ``cancel`` on the held stream: the generator stops the
job within one step. The number of held jobs per process is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from grpc import aio

from philip.logs import get_logger
from philip.quotas import GENERATIONS, Quotas
from philip.rpc.errors import FailedPrecondition, ResourceExhausted, Unavailable, error_from_code
from philip.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.gateway.upstream import metadata

log = get_logger("services.gateway.generations")

_TERMINAL = ("result", "error", "cancelled")


class DetachedGenerations:
    """Runs Generate calls on behalf of callers that do not hold a stream."""

    def __init__(self, generator: generator_pb2_grpc.GeneratorServiceStub, quotas: Quotas, *,
                 max_jobs: int = 256, timeout_s: float = 600.0) -> None:
        self.generator = generator
        self.quotas = quotas
        self.max_jobs = max_jobs
        self.timeout_s = timeout_s
        self._calls: dict[str, aio.StreamStreamCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, params: common_pb2.GenerationParams) -> str:
        """Start a job; returns its id once the generator accepted it (its errors otherwise)."""
        if len(self._tasks) >= self.max_jobs:
            raise ResourceExhausted(f"this gateway holds {self.max_jobs} generation jobs already; retry shortly",
                                    retry_after_s=1.0)
        accepted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._hold(params, accepted), name="detached-generation")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await accepted

    async def cancel(self, job_id: str) -> None:
        """Ask the generator to stop ``job_id``; FailedPrecondition when this process does not hold it."""
        call = self._calls.get(job_id)
        if call is None:
            raise FailedPrecondition(f"job {job_id} is not held by this gateway (it ended, or its stream belongs to "
                                     "another gateway replica or a gRPC client)", field="job_id")
        with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(generator_pb2.GenerateClientMessage(cancel=generator_pb2.CancelGeneration()))

    def holds(self, job_id: str) -> bool:
        return job_id in self._calls

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Until ``job_id``'s held stream ends (or ``timeout_s``)."""
        for task in list(self._tasks):
            if task.get_name() == f"job-{job_id}":
                await asyncio.wait({task}, timeout=timeout_s)

    async def close(self) -> None:
        """Shutdown: cancel every held job (the generator records them as cancelled)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    async def _hold(self, params: common_pb2.GenerationParams, accepted: asyncio.Future[str]) -> None:
        job_id = ""
        try:
            async with self.quotas.hold(GENERATIONS, f"gen_{uuid.uuid4().hex}"):
                call = self.generator.Generate(timeout=self.timeout_s, metadata=metadata())
                try:
                    await call.write(generator_pb2.GenerateClientMessage(
                        start=generator_pb2.GenerateStart(params=params)))
                    async for event in call:
                        kind = event.WhichOneof("event")
                        if not accepted.done():
                            if kind == "error":
                                raise error_from_code(event.error.code, event.error.message)
                            job_id = event.job_id
                            self._calls[job_id] = call
                            asyncio.current_task().set_name(f"job-{job_id}")  # type: ignore[union-attr]
                            accepted.set_result(job_id)
                        if kind in _TERMINAL:
                            break
                finally:
                    self._calls.pop(job_id, None)
                    call.cancel()  # no-op after the last event; on shutdown it stops the job
        except asyncio.CancelledError:
            if not accepted.done():
                accepted.set_exception(Unavailable("the gateway is shutting down; retry on another replica"))
            raise
        except Exception as exc:
            if not accepted.done():
                accepted.set_exception(exc)
            else:
                log.warning("generation.detached_failed", job_id=job_id, error=str(exc))


__all__ = ["DetachedGenerations"]
