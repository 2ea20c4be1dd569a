"""PersonalizerService over gRPC: a thin servicer (proto <-> domain), the codec, and the bootstrap
that also starts this process's training worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from grpc import aio

from philip.activity import ActivityLog
from philip.logs import bind_ids
from philip.quotas import Quotas
from philip.rpc.server import RegisterFn
from philip.settings import Settings
from philip.store import Store
from philip.v1 import common_pb2, personalizer_pb2, personalizer_pb2_grpc
from services.personalizer.records import (
    Adapter,
    AdapterReady,
    JobChanged,
    SamplePreview,
    StepDone,
    TrainingEvent,
    TrainingJob,
)
from services.personalizer.requests import AdapterRequest
from services.personalizer.service import Personalizer
from services.personalizer.worker import TrainingWorker, WorkerConfig

SERVICE_NAME = personalizer_pb2.DESCRIPTOR.services_by_name["PersonalizerService"].full_name

_METHODS = {
    personalizer_pb2.ADAPTER_METHOD_UNSPECIFIED: "lora",
    personalizer_pb2.ADAPTER_METHOD_LORA: "lora",
    personalizer_pb2.ADAPTER_METHOD_TEXTUAL_INVERSION: "textual_inversion",
}
_METHOD_PB = {"lora": personalizer_pb2.ADAPTER_METHOD_LORA,
              "textual_inversion": personalizer_pb2.ADAPTER_METHOD_TEXTUAL_INVERSION}
_STATES = {"queued": common_pb2.JOB_STATE_QUEUED, "running": common_pb2.JOB_STATE_RUNNING,
           "succeeded": common_pb2.JOB_STATE_SUCCEEDED, "failed": common_pb2.JOB_STATE_FAILED,
           "cancelled": common_pb2.JOB_STATE_CANCELLED}


# ---- codec -------------------------------------------------------------------------------------


def request_from_pb(pb: personalizer_pb2.CreateAdapterRequest) -> AdapterRequest:
    return AdapterRequest(tuple(pb.reference_images), pb.token, pb.class_word,
                          _METHODS.get(pb.method, f"unknown method {pb.method}"), pb.steps, pb.rank)


def job_to_pb(job: TrainingJob) -> personalizer_pb2.TrainingJob:
    return personalizer_pb2.TrainingJob(
        job_id=job.job_id, state=_STATES[job.state], step=job.step, total_steps=job.steps, token=job.token,
        method=_METHOD_PB[job.method], adapter_id=job.adapter_id, error=job.error, created_ms=job.created_ms,
        attempts=job.attempts)


def adapter_to_pb(adapter: Adapter) -> personalizer_pb2.Adapter:
    return personalizer_pb2.Adapter(
        adapter_id=adapter.adapter_id, token=adapter.token, class_word=adapter.class_word,
        method=_METHOD_PB[adapter.method], created_ms=adapter.created_ms, job_id=adapter.job_id, steps=adapter.steps)


def event_to_pb(event: TrainingEvent) -> personalizer_pb2.TrainingEvent:
    if isinstance(event, JobChanged):
        return personalizer_pb2.TrainingEvent(job=job_to_pb(event.job))
    if isinstance(event, StepDone):
        return personalizer_pb2.TrainingEvent(progress=personalizer_pb2.TrainingProgress(
            step=event.step, total_steps=event.total, loss=event.loss, resumed_from=event.resumed_from))
    if isinstance(event, SamplePreview):
        return personalizer_pb2.TrainingEvent(preview=personalizer_pb2.TrainingPreview(
            step=event.step, image=common_pb2.Image(png=event.png, width=event.width, height=event.height)))
    assert isinstance(event, AdapterReady)
    return personalizer_pb2.TrainingEvent(adapter=adapter_to_pb(event.adapter))


# ---- servicer ----------------------------------------------------------------------------------


class PersonalizerServicer(personalizer_pb2_grpc.PersonalizerServiceServicer):
    """Decode -> domain -> encode; domain errors are mapped to statuses by the interceptor."""

    def __init__(self, personalizer: Personalizer) -> None:
        self.personalizer = personalizer

    async def CreateAdapter(self, request: personalizer_pb2.CreateAdapterRequest,
                            context: aio.ServicerContext) -> personalizer_pb2.TrainingJob:
        return job_to_pb(await self.personalizer.create(request_from_pb(request)))

    async def WatchJob(self, request: personalizer_pb2.WatchJobRequest,
                       context: aio.ServicerContext) -> AsyncIterator[personalizer_pb2.TrainingEvent]:
        with bind_ids(job_id=request.job_id):
            async for event in self.personalizer.watch(request.job_id):
                yield event_to_pb(event)

    async def GetTrainingJob(self, request: personalizer_pb2.WatchJobRequest,
                             context: aio.ServicerContext) -> personalizer_pb2.TrainingJob:
        return job_to_pb(await self.personalizer.get_job(request.job_id))

    async def CancelJob(self, request: personalizer_pb2.CancelJobRequest,
                        context: aio.ServicerContext) -> personalizer_pb2.TrainingJob:
        with bind_ids(job_id=request.job_id):
            return job_to_pb(await self.personalizer.cancel(request.job_id))

    async def ListAdapters(self, request: personalizer_pb2.ListAdaptersRequest,
                           context: aio.ServicerContext) -> personalizer_pb2.ListAdaptersResponse:
        return personalizer_pb2.ListAdaptersResponse(
            adapters=[adapter_to_pb(a) for a in await self.personalizer.list_adapters()])

    async def GetAdapter(self, request: personalizer_pb2.GetAdapterRequest,
                         context: aio.ServicerContext) -> personalizer_pb2.Adapter:
        return adapter_to_pb(await self.personalizer.get_adapter(request.adapter_id))

    async def DeleteAdapter(self, request: personalizer_pb2.DeleteAdapterRequest,
                            context: aio.ServicerContext) -> personalizer_pb2.DeleteAdapterResponse:
        await self.personalizer.delete_adapter(request.adapter_id)
        return personalizer_pb2.DeleteAdapterResponse()


# ---- bootstrap ---------------------------------------------------------------------------------


def open_personalizer(settings: Settings, store: Store) -> Personalizer:
    """The domain for ``settings`` (reads the model's tokenizer to vet new tokens). Blocking."""
    from philip.models.adapters import load_tokenizer

    return Personalizer(store, settings.adapters_dir, load_tokenizer(settings.model_dir),
                        quotas=Quotas.from_settings(store, settings),
                        activity=ActivityLog.from_settings(store, settings))


class WorkerTask:
    """This process's training worker, run as a background task next to the servicer."""

    def __init__(self, personalizer: Personalizer, settings: Settings) -> None:
        import torch

        torch.set_num_threads(settings.torch_threads)
        config = WorkerConfig(model_dir=settings.model_dir, device=settings.device,
                              reclaim_idle_s=settings.train_reclaim_idle_s,
                              heartbeat_s=min(1.0, settings.train_reclaim_idle_s / 4),
                              checkpoint_every=settings.train_checkpoint_every)
        consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.worker = TrainingWorker(personalizer, config, consumer)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.worker.run(self._stop))

    async def close(self) -> None:
        """Stop taking jobs; a job in progress stops at its next step and goes back to the queue."""
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def build(personalizer: Personalizer) -> list[tuple[str, RegisterFn]]:
    servicer = PersonalizerServicer(personalizer)

    def register(server: aio.Server) -> None:
        personalizer_pb2_grpc.add_PersonalizerServiceServicer_to_server(servicer, server)

    return [(SERVICE_NAME, register)]
