"""GeneratorService over gRPC: a thin servicer (proto <-> domain) and its bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

from grpc import aio

from philip.generation.codec import params_from_pb
from philip.generation.requests import RequestResolver, load_styles
from philip.models.families import SD, GenerationDefaults
from philip.models.load_options import LoadOptions
from philip.models.model_info import ModelInfo, describe_model
from philip.models.variants import Variant
from philip.rpc.errors import InvalidArgument, PhilipError
from philip.rpc.server import RegisterFn
from philip.settings import Settings
from philip.store import Store
from philip.v1 import generator_pb2, generator_pb2_grpc
from services.generator import codec
from services.generator.batching import BatchRunner, GenerationQueue
from services.generator.events import Failed
from services.generator.jobs import Generator, JobHandle

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
# A gateway whose own copy of the deadline fires first cancels us a moment before ours does; a
# cancellation this close to the deadline is the deadline.
DEADLINE_SLACK_S = 0.1


class Engine(BatchRunner, Protocol):
    """What the generator needs from a model: batches, its native size and scheduler names."""

    @property
    def native_size(self) -> int: ...

    @property
    def schedulers(self) -> tuple[str, ...]: ...


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Validate -> call the domain -> convert -> stream. Errors are mapped by the interceptor."""

    def __init__(self, generator: Generator, model_info: ModelInfo | None = None) -> None:
        self.generator = generator
        self.model_info = model_info or describe_engine(generator)  # the model is fixed for the process

    async def Generate(
        self, request_iterator: AsyncIterator[generator_pb2.GenerateClientMessage], context: aio.ServicerContext
    ) -> AsyncIterator[generator_pb2.GenerateEvent]:
        start = await _read_start(request_iterator)
        request = self.generator.resolve(params_from_pb(start.params))
        handle = await self.generator.submit(request)
        controls = asyncio.create_task(_follow_controls(request_iterator, handle))
        finished = False
        try:
            async for event in handle:
                yield codec.event_to_pb(handle.job_id, event)
                if isinstance(event, Failed):
                    raise codec.error_for(event)  # the stream ends with the same status as its error event
            finished = True
            if (control_error := _failure(controls)) is not None:
                raise control_error  # e.g. a bad preview_rate, after its job's `cancelled` event
        finally:
            controls.cancel()
            _failure(controls)  # retrieved, so asyncio does not log it as never retrieved
            if not finished:  # client went away, deadline passed, or server shutdown
                handle.cancel(_stop_reason(context))

    async def GetJob(self, request: generator_pb2.GetJobRequest, context: aio.ServicerContext) -> generator_pb2.Job:
        if not request.job_id:
            raise InvalidArgument("job_id is required", field="job_id")
        return codec.job_to_pb(await self.generator.get_job(request.job_id))

    async def GetModelInfo(self, request: generator_pb2.GetModelInfoRequest,
                           context: aio.ServicerContext) -> generator_pb2.ModelInfo:
        return codec.model_info_to_pb(self.model_info)


async def _read_start(messages: AsyncIterator[generator_pb2.GenerateClientMessage]) -> generator_pb2.GenerateStart:
    try:
        first = await anext(aiter(messages))
    except StopAsyncIteration:
        raise InvalidArgument("the first message must be `start`; the stream was empty", field="start") from None
    if first.WhichOneof("message") != "start":
        raise InvalidArgument(f"the first message must be `start`, got `{first.WhichOneof('message')}`",
                              field="start")
    return first.start


async def _follow_controls(messages: AsyncIterator[generator_pb2.GenerateClientMessage], handle: JobHandle) -> None:
    """Apply later client messages; a bad one cancels the job and ends the stream with its error."""
    try:
        async for message in messages:
            kind = message.WhichOneof("message")
            if kind == "cancel":
                handle.cancel("client")
            elif kind == "preview_rate":
                handle.set_preview_every(message.preview_rate.preview_every)
            else:
                raise InvalidArgument("`start` may only be the first message", field="start")
    except PhilipError:
        handle.cancel("client")
        raise


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    return task.exception() if task.done() and not task.cancelled() else None


def _stop_reason(context: aio.ServicerContext) -> str:
    remaining = context.time_remaining()  # None or huge when the call has no deadline
    return "deadline" if remaining is not None and remaining <= DEADLINE_SLACK_S else "client"


def open_generator(settings: Settings, store: Store, *, engine: Engine | None = None) -> Generator:
    """The generator domain for ``settings``; loads the model unless an engine is given. Blocking."""
    if engine is None:
        from services.generator.engine import DiffusionEngine  # torch stays out of the servicer's imports

        models = settings.models
        engine = DiffusionEngine.load(models.model_dir, settings.server.device, threads=settings.server.torch_threads,
                                      adapters_dir=models.adapters_dir, adapter_cache=models.adapter_cache,
                                      dtype=models.dtype, options=LoadOptions.from_settings(models))
    resolver = RequestResolver(native_size=engine.native_size, schedulers=engine.schedulers,
                               styles=load_styles(settings.models.styles_path),
                               adapters_dir=settings.models.adapters_dir,
                               # an engine without defaults of its own (a test double) gets SD-1.x's
                               defaults=getattr(engine, "defaults", None) or GenerationDefaults())
    batching = settings.batching
    queue = GenerationQueue(engine, max_queue=batching.max_queue, max_batch=batching.max_batch,
                            batch_window_ms=settings.batching.batch_window_ms)
    return Generator(store, queue, resolver, encode_event=codec.encode_event, blob_ttl_s=settings.store.blob_ttl_s)


def describe_engine(generator: Generator) -> ModelInfo:
    """The model the generator's engine serves; an engine that cannot describe itself (a test double standing
    in for philip-tiny) is described as SD-1.x from its request defaults."""
    engine, defaults = generator.queue.runner, generator.resolver.defaults
    describe = getattr(engine, "model_info", None)
    if describe is not None:
        info: ModelInfo = describe()
        return info
    return describe_model(SD, Variant(), "fp32", replace(defaults, native_size=generator.resolver.native_size),
                          generator.resolver.schedulers)


def build(settings: Settings, store: Store, *, generator: Generator | None = None) -> list[tuple[str, RegisterFn]]:
    """Services for ``GrpcServer``; pass ``generator`` to share one (and close it yourself)."""
    servicer = GeneratorServicer(generator or open_generator(settings, store))

    def register(server: aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)

    return [(SERVICE_NAME, register)]
