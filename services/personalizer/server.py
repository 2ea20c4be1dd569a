"""PersonalizerService over gRPC: a thin servicer (proto <-> domain through ``codec.py``) and the
bootstrap that also starts this process's training worker."""

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
from philip.v1 import personalizer_pb2, personalizer_pb2_grpc
from services.personalizer.codec import adapter_to_pb, event_to_pb, job_to_pb, request_from_pb
from services.personalizer.service import Personalizer
from services.personalizer.worker import TrainingWorker, WorkerConfig

SERVICE_NAME = personalizer_pb2.DESCRIPTOR.services_by_name["PersonalizerService"].full_name

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
    """The domain for ``settings`` (reads the model's family, to refuse what it cannot train, and its tokenizer, to
    vet new tokens). Blocking."""
    from philip.models.adapters import load_tokenizer
    from philip.models.families import detect_family

    return Personalizer(store, settings.models.adapters_dir, load_tokenizer(settings.models.model_dir),
                        quotas=Quotas.from_settings(store, settings),
                        activity=ActivityLog.from_settings(store, settings),
                        family=detect_family(settings.models.model_dir))


class WorkerTask:
    """This process's training worker, run as a background task next to the servicer."""

    def __init__(self, personalizer: Personalizer, settings: Settings) -> None:
        import torch

        torch.set_num_threads(settings.server.torch_threads)
        config = WorkerConfig(model_dir=settings.models.model_dir, device=settings.server.device,
                              reclaim_idle_s=settings.training.train_reclaim_idle_s,
                              heartbeat_s=min(1.0, settings.training.train_reclaim_idle_s / 4),
                              checkpoint_every=settings.training.train_checkpoint_every)
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
