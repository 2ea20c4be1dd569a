"""The gateway's personalization RPCs: passed through to a personalizer replica unchanged (the
caller's remaining deadline and request id go upstream; upstream statuses come back as they are)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from grpc import aio

from philip.rpc.errors import FailedPrecondition
from philip.rpc.status import DETAILS_KEY
from philip.v1 import personalizer_pb2, personalizer_pb2_grpc
from services.gateway.upstream import metadata

if TYPE_CHECKING:
    from services.gateway.core import GatewayCore

Reply = TypeVar("Reply")


class PersonalizationProxy:
    """Mixed into the Gateway servicer; ``personalizer`` is None when none is configured."""

    personalizer: personalizer_pb2_grpc.PersonalizerServiceStub | None
    core: GatewayCore

    def _stub(self) -> personalizer_pb2_grpc.PersonalizerServiceStub:
        if self.personalizer is None:
            raise FailedPrecondition("personalization is not enabled on this gateway (set PHILIP_PERSONALIZER_ADDR)")
        return self.personalizer

    async def CreateAdapter(self, request: personalizer_pb2.CreateAdapterRequest,
                            context: aio.ServicerContext) -> personalizer_pb2.TrainingJob:
        return await _unary(self._stub().CreateAdapter, request, context)

    async def GetTrainingJob(self, request: personalizer_pb2.WatchJobRequest,
                             context: aio.ServicerContext) -> personalizer_pb2.TrainingJob:
        return await _unary(self._stub().GetTrainingJob, request, context)

    async def CancelJob(self, request: personalizer_pb2.CancelJobRequest,
                        context: aio.ServicerContext) -> personalizer_pb2.TrainingJob:
        return await _unary(self._stub().CancelJob, request, context)

    async def ListAdapters(self, request: personalizer_pb2.ListAdaptersRequest,
                           context: aio.ServicerContext) -> personalizer_pb2.ListAdaptersResponse:
        return await _unary(self._stub().ListAdapters, request, context)

    async def GetAdapter(self, request: personalizer_pb2.GetAdapterRequest,
                         context: aio.ServicerContext) -> personalizer_pb2.Adapter:
        return await _unary(self._stub().GetAdapter, request, context)

    async def DeleteAdapter(self, request: personalizer_pb2.DeleteAdapterRequest,
                            context: aio.ServicerContext) -> personalizer_pb2.DeleteAdapterResponse:
        return await _unary(self._stub().DeleteAdapter, request, context)

    async def WatchJob(self, request: personalizer_pb2.WatchJobRequest,
                       context: aio.ServicerContext) -> AsyncIterator[personalizer_pb2.TrainingEvent]:
        with self.core.open_stream():
            call = self._stub().WatchJob(request, timeout=context.time_remaining(), metadata=metadata())
            try:
                async for event in call:
                    yield event
            except aio.AioRpcError as exc:
                await abort_like(context, exc)
            finally:
                call.cancel()  # no-op when finished; otherwise our client left


async def _unary(method: Callable[..., Awaitable[Reply]], request: object, context: aio.ServicerContext) -> Reply:
    try:
        return await method(request, timeout=context.time_remaining(), metadata=metadata())
    except aio.AioRpcError as exc:
        await abort_like(context, exc)


async def abort_like(context: aio.ServicerContext, exc: aio.AioRpcError) -> NoReturn:
    """End our call with the upstream status: code, message and rich error details."""
    details = tuple((key, value) for key, value in exc.trailing_metadata() or () if key == DETAILS_KEY)
    await context.abort(exc.code(), exc.details() or "", trailing_metadata=details)
    raise AssertionError("unreachable: abort raises")
