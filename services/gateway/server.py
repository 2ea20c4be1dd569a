"""The Gateway service: the public API.

Generate and GetJob pass through to a generator unchanged (the caller's remaining deadline and
request id go upstream; upstream failures come back with the same code, message and details).
Session, Subscribe and GetSession convert between the wire and the session domain
(``services/gateway/sessions.py``); every reader gets its own bounded buffer (``fanout.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from philip.activity import ActivityLog
from philip.generation.requests import load_styles
from philip.logs import bind_ids
from philip.quotas import GENERATIONS, Quotas
from philip.rpc.errors import InvalidArgument, error_from_code
from philip.rpc.server import RegisterFn
from philip.settings import Settings
from philip.store import Store
from philip.stream_limits import StreamLimits
from philip.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    personalizer_pb2,
    personalizer_pb2_grpc,
    refiner_pb2,
    refiner_pb2_grpc,
)
from services.gateway import codec
from services.gateway.core import GatewayCore
from services.gateway.fanout import buffered
from services.gateway.generations import DetachedGenerations
from services.gateway.personalization import PersonalizationProxy, abort_like
from services.gateway.sessions import SessionManager
from services.gateway.upstream import GrpcUpstream, metadata

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
GENERATOR_SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
REFINER_SERVICE = refiner_pb2.DESCRIPTOR.services_by_name["RefinerService"].full_name
PERSONALIZER_SERVICE = personalizer_pb2.DESCRIPTOR.services_by_name["PersonalizerService"].full_name
# Errors of a round this connection asked for that are the caller's to fix end its stream with
# that status; others (a replica gone, ...) arrive as `error` events and the session goes on.
CALLER_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
                          "PERMISSION_DENIED", "OUT_OF_RANGE"})


class GatewayServicer(PersonalizationProxy, gateway_pb2_grpc.GatewayServicer):
    """The gRPC edge over :class:`GatewayCore` (the HTTP edge, ``http/routes.py``, is the other one).

    Sessions are the gateway's own domain; generation requests are validated by the generator and
    personalization requests by the personalizer, whose statuses come back unchanged.
    """

    def __init__(self, core: GatewayCore, *, subscriber_buffer: int = 16) -> None:
        self.core = core
        self.generator = core.generator
        self.personalizer = core.personalizer
        self.sessions = core.sessions
        self.quotas: Quotas = core.sessions.quotas
        self.activity: ActivityLog = core.sessions.activity
        self.subscriber_buffer = subscriber_buffer

    async def Generate(
        self, request_iterator: AsyncIterator[generator_pb2.GenerateClientMessage], context: aio.ServicerContext
    ) -> AsyncIterator[generator_pb2.GenerateEvent]:
        async with self.quotas.hold(GENERATIONS, f"gen_{uuid.uuid4().hex}"):  # the job's whole life
            call = self.generator.Generate(timeout=_timeout(context), metadata=metadata())
            accepted = asyncio.Event()  # the generator answered: later client messages may follow
            pump = asyncio.create_task(_pump(request_iterator, call, accepted))
            ended = False  # saw the job's last event (result or cancelled)
            try:
                async for event in call:
                    accepted.set()
                    ended = event.WhichOneof("event") in ("result", "cancelled")
                    yield event
            except aio.AioRpcError as exc:
                if not (ended and _overwritten(exc)):
                    await abort_like(context, exc)
            finally:
                pump.cancel()
                call.cancel()  # no-op when finished; otherwise our client left: tell the generator

    async def GetJob(self, request: generator_pb2.GetJobRequest, context: aio.ServicerContext) -> generator_pb2.Job:
        try:
            job: generator_pb2.Job = await self.generator.GetJob(request, timeout=_timeout(context),
                                                                 metadata=metadata())
        except aio.AioRpcError as exc:
            await abort_like(context, exc)
        return job

    async def Session(
        self, request_iterator: AsyncIterator[gateway_pb2.SessionClientMessage], context: aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.SessionEvent]:
        with self.core.open_stream():
            messages = aiter(request_iterator)
            first = await anext(messages, None)
            kind = first.WhichOneof("message") if first is not None else None
            mine: set[int] = set()  # rounds this connection asked for (0: its finalize)
            if first is not None and kind == "start":
                session_id = await self.sessions.start(**await codec.start_from_pb(first.start))
                mine.add(1)
            elif first is not None and kind == "resume":
                session_id = first.resume.session_id
            else:
                raise InvalidArgument("the first Session message must be `start` or `resume`", field="message")
            with bind_ids(session_id=session_id):
                async for event in self._session_events(session_id, messages, mine):
                    yield event

    async def _session_events(self, session_id: str, messages: AsyncIterator[gateway_pb2.SessionClientMessage],
                              mine: set[int]) -> AsyncIterator[gateway_pb2.SessionEvent]:
        """The snapshot, then the session's events through this reader's bounded buffer, while the
        client's commands run beside it; a command's error ends the stream with its status."""
        view = await self.sessions.snapshot(session_id)
        yield gateway_pb2.SessionEvent(session_id=session_id, snapshot=codec.snapshot_to_pb(view))
        commands = asyncio.create_task(self._commands(session_id, messages, mine))
        events = aiter(buffered(self.sessions.follow(session_id, view.event_id), codec.session_droppable,
                                self.subscriber_buffer))
        try:
            while True:
                # Pulled one at a time, as the client reads: nothing queues up beyond the buffer.
                payload = await _next_or_failure(events, commands)
                if payload is None:
                    return
                event = gateway_pb2.SessionEvent.FromString(payload)
                yield event
                if event.WhichOneof("event") == "error" and event.round in mine \
                        and event.error.code in CALLER_CODES:
                    raise error_from_code(event.error.code, event.error.message)
        finally:
            commands.cancel()
            with contextlib.suppress(BaseException):
                await events.aclose()  # type: ignore[attr-defined]

    async def _commands(self, session_id: str, messages: AsyncIterator[gateway_pb2.SessionClientMessage],
                        mine: set[int]) -> None:
        async for message in messages:
            kind = message.WhichOneof("message")
            if kind == "feedback":
                mine.add(await self.sessions.feedback(session_id, **await codec.feedback_from_pb(message.feedback)))
            elif kind == "finalize":
                mine.add(0)
                await self.sessions.finalize(session_id, message.finalize.image_id, message.finalize.scale)
            elif kind == "cancel":
                await self.sessions.cancel(session_id)
            else:
                raise InvalidArgument(f"`{kind}` is only allowed as the first Session message", field="message")
        await asyncio.Event().wait()  # half-closed: the events go on until the session ends

    async def Subscribe(
        self, request: gateway_pb2.SubscribeRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.SubscribeEvent]:
        with self.core.open_stream():
            async for event in self._subscribed(request):
                yield event

    async def _subscribed(self, request: gateway_pb2.SubscribeRequest) -> AsyncIterator[gateway_pb2.SubscribeEvent]:
        target = request.WhichOneof("target")
        if target == "session_id":
            with bind_ids(session_id=request.session_id):
                async for payload in buffered(self.sessions.follow(request.session_id), codec.session_droppable,
                                              self.subscriber_buffer):
                    yield gateway_pb2.SubscribeEvent(session=gateway_pb2.SessionEvent.FromString(payload))
        elif target == "job_id":
            with bind_ids(job_id=request.job_id):
                async for payload in buffered(self.sessions.follow_job(request.job_id), codec.job_droppable,
                                              self.subscriber_buffer):
                    yield gateway_pb2.SubscribeEvent(job=generator_pb2.GenerateEvent.FromString(payload))
        else:
            raise InvalidArgument("set session_id or job_id", field="target")

    async def GetSession(self, request: gateway_pb2.GetSessionRequest,
                         context: aio.ServicerContext) -> gateway_pb2.SessionSnapshot:
        return codec.snapshot_to_pb(await self.sessions.snapshot(request.session_id))

    async def ListActivity(self, request: gateway_pb2.ListActivityRequest,
                           context: aio.ServicerContext) -> gateway_pb2.ListActivityResponse:
        entries, token = await self.activity.page(request.page_size, request.page_token)
        return gateway_pb2.ListActivityResponse(entries=[codec.activity_to_pb(e) for e in entries],
                                                next_page_token=token)

    async def ListSessions(self, request: gateway_pb2.ListSessionsRequest,
                           context: aio.ServicerContext) -> gateway_pb2.ListSessionsResponse:
        summaries, token = await self.sessions.index.page(request.page_size, request.page_token)
        return gateway_pb2.ListSessionsResponse(sessions=[codec.summary_to_pb(s) for s in summaries],
                                                next_page_token=token)

    async def ListStyles(self, request: gateway_pb2.ListStylesRequest,
                         context: aio.ServicerContext) -> gateway_pb2.ListStylesResponse:
        return codec.styles_to_pb(self.core.styles)

    async def GetModelInfo(self, request: generator_pb2.GetModelInfoRequest,
                           context: aio.ServicerContext) -> generator_pb2.ModelInfo:
        return await self.core.model_info()


async def _next_or_failure(events: AsyncIterator[bytes], commands: asyncio.Task[None]) -> bytes | None:
    """The next event (None at the end), unless the client's commands fail first: then their error."""
    following = asyncio.ensure_future(anext(events, None))
    try:
        await asyncio.wait({following, commands}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        following.cancel()
        raise
    if commands.done() and not following.done():
        following.cancel()
        commands.result()  # raises the command's error
    return following.result()


async def _pump(messages: AsyncIterator[generator_pb2.GenerateClientMessage], call: aio.StreamStreamCall,
                accepted: asyncio.Event) -> None:
    """Forward client messages upstream, then half-close; stops quietly once the call is over.

    Messages after the first wait until the generator has answered: a write to a call the
    generator already ended (e.g. a `cancel` right behind a rejected `start`) makes grpc aio
    replace the generator's status with INTERNAL "Internal error from Core" (grpc/grpc#36066).
    """
    with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
        first = True
        async for message in messages:
            if not first:
                await accepted.wait()
            if call.done():
                return
            await call.write(message)
            first = False
        if not call.done():
            await call.done_writing()


def _overwritten(exc: aio.AioRpcError) -> bool:
    """The status grpc aio invents when a write races the end of the call (grpc/grpc#36066)."""
    return exc.code() == grpc.StatusCode.INTERNAL and exc.details() == "Internal error from Core"


def _timeout(context: aio.ServicerContext) -> float | None:
    # grpc does not propagate deadlines between hops by itself.
    return context.time_remaining()


def open_sessions(settings: Settings, store: Store, generator_channel: aio.Channel,
                  refiner_channel: aio.Channel) -> SessionManager:
    """The session domain on real upstreams; the caller closes it (and the channels)."""
    upstream = GrpcUpstream(generator_pb2_grpc.GeneratorServiceStub(generator_channel),
                            refiner_pb2_grpc.RefinerServiceStub(refiner_channel))
    return SessionManager(store, upstream, encode_event=codec.encode_event, ttl_s=settings.sessions.session_idle_s,
                          max_references=settings.sessions.max_references, quotas=Quotas.from_settings(store, settings),
                          activity=ActivityLog.from_settings(store, settings),
                          quota_idle_s=settings.quotas.quota_session_idle_s,
                          stale_after_s=settings.sessions.session_stale_s)


def open_core(settings: Settings, store: Store, generator_channel: aio.Channel, sessions: SessionManager,
              personalizer_channel: aio.Channel | None = None) -> GatewayCore:
    """The domain objects both edges call; the caller closes ``sessions``, ``generations`` and the channels."""
    generator = generator_pb2_grpc.GeneratorServiceStub(generator_channel)
    personalizer = personalizer_pb2_grpc.PersonalizerServiceStub(personalizer_channel) if personalizer_channel else None
    # One GetModelInfo answer per process: the sessions' plain rounds and both edges read the same one.
    model = sessions.upstream.model if isinstance(sessions.upstream, GrpcUpstream) else None
    return GatewayCore(store, sessions, generator, DetachedGenerations(generator, sessions.quotas),
                       load_styles(settings.models.styles_path), personalizer,
                       StreamLimits(settings.sessions.max_streams, settings.sessions.max_streams_per_tenant), model)


def build(core: GatewayCore) -> list[tuple[str, RegisterFn]]:
    """Services for ``GrpcServer``."""
    servicer = GatewayServicer(core)

    def register(server: aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)

    return [(SERVICE_NAME, register)]


__all__ = [
    "GENERATOR_SERVICE", "PERSONALIZER_SERVICE", "REFINER_SERVICE", "SERVICE_NAME", "GatewayServicer", "build",
    "open_core", "open_sessions",
]
