"""Server interceptor that turns exceptions into gRPC statuses and logs every call.

Handlers just ``raise InvalidArgument(...)`` etc.; this module owns the mapping so
no servicer repeats try/except boilerplate, and unexpected bugs never leak their
text (which may contain paths or prompts) to clients.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc import aio

from philip import metrics
from philip.logs import bind_ids, get_logger
from philip.rpc.errors import PhilipError, Unavailable
from philip.rpc.status import to_rpc_status

# The exception aio's context.abort() raises; private, hence the name-based fallback.
_AbortError: type[BaseException] | None = getattr(
    getattr(getattr(grpc, "_cython", None), "cygrpc", None), "AbortError", None
)

REQUEST_ID_KEY = "x-request-id"
# Health probes and reflection fire every few seconds; keep them out of info logs.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

log = get_logger("philip.rpc")


def _is_abort(exc: BaseException) -> bool:
    """True for the exception ``context.abort*`` raises: the status is already set."""
    if _AbortError is not None and isinstance(exc, _AbortError):
        return True
    return type(exc).__name__ == "AbortError"


def _is_store_unavailable(exc: BaseException) -> bool:
    # Duck-typed by class name so the transport layer does not import philip.store.
    return any(cls.__name__ == "StoreUnavailable" for cls in type(exc).__mro__)


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
        if key == REQUEST_ID_KEY and isinstance(value, str) and value:
            return value[:128]  # bound the size: it is echoed into every log line
    return uuid.uuid4().hex


class _Call:
    """Per-call bookkeeping: request id, timing, outcome, the final log line."""

    def __init__(self, method: str, request_id: str) -> None:
        self.method = method
        self.request_id = request_id
        self.started = time.perf_counter()
        self.code = "OK"

    async def fail(self, exc: BaseException, context: aio.ServicerContext) -> None:
        """Abort ``context`` with the status for ``exc`` (always raises)."""
        if isinstance(exc, PhilipError):
            err = exc
        elif _is_store_unavailable(exc):
            log.warning("rpc.store_unavailable", method=self.method, error=str(exc))
            err = Unavailable(f"store unavailable: {exc}", retry_after_s=getattr(exc, "retry_after_s", None))
        else:
            log.error("rpc.internal_error", method=self.method, exc_info=exc)
            err = PhilipError(f"internal error (request id {self.request_id})")
        self.code = err.code
        await context.abort_with_status(to_rpc_status(err))

    async def handle(self, exc: BaseException, context: aio.ServicerContext) -> NoReturn:
        """Whatever left a handler: cancellation and an abort (whose status is set) go on as they are,
        everything else ends the call with its status."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) or _is_abort(exc):
            self.note(exc, context)
            raise exc
        await self.fail(exc, context)
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    def note(self, exc: BaseException, context: aio.ServicerContext) -> None:
        """Record the outcome of an exception that propagates untouched."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = "CANCELLED"
        elif _is_abort(exc):
            code = _context_code(context)
            self.code = code.name if code is not None else "UNKNOWN"

    def finish(self, context: aio.ServicerContext) -> None:
        if self.code == "OK":
            # A handler may also end the call with set_code() and a normal return.
            code = _context_code(context)
            if code is not None:
                self.code = code.name
        duration_ms = round((time.perf_counter() - self.started) * 1000, 2)
        quiet = self.method.startswith(_QUIET_PREFIXES)
        emit = log.debug if quiet else log.info
        emit("rpc.finished", method=self.method, code=self.code, duration_ms=duration_ms)
        metrics.RPCS.labels(self.method, self.code).inc()
        metrics.RPC_SECONDS.labels(self.method).observe(duration_ms / 1000)


def _context_code(context: aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:  # older grpc or a test double without code()
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def _wrap_unary_response(behavior: Callable[..., Any], call_info: Callable[[], _Call]) -> Callable[..., Any]:
    """Wrap unary-unary / stream-unary behaviours."""

    async def wrapper(request_or_iterator: Any, context: aio.ServicerContext) -> Any:
        call = call_info()
        with bind_ids(request_id=call.request_id):
            try:
                result = behavior(request_or_iterator, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except (Exception, asyncio.CancelledError, GeneratorExit) as exc:
                await call.handle(exc, context)
            finally:
                call.finish(context)

    return wrapper


def _wrap_stream_response(behavior: Callable[..., Any], call_info: Callable[[], _Call]) -> Callable[..., Any]:
    """Wrap unary-stream / stream-stream behaviours as an async generator.

    The original may be an async generator, or a coroutine that writes with
    ``context.write()``; both work because grpc awaits a coroutine's result only
    when the handler is not itself a generator, and we always are one.
    """

    async def wrapper(request_or_iterator: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        call = call_info()
        with bind_ids(request_id=call.request_id):
            try:
                result = behavior(request_or_iterator, context)
                if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                    async for message in result:
                        yield message
                elif inspect.isawaitable(result):
                    await result
                elif result is not None:  # a plain (sync) iterator of responses
                    for message in result:
                        yield message
            except (Exception, asyncio.CancelledError, GeneratorExit) as exc:
                await call.handle(exc, context)
            finally:
                call.finish(context)

    return wrapper


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps exceptions to statuses, binds ``request_id`` and logs one line per call.

    * :class:`PhilipError` -> its code, message and rich details;
    * an exception class named ``StoreUnavailable`` -> ``UNAVAILABLE``;
    * ``context.abort()`` by the handler and ``asyncio.CancelledError`` pass through;
    * anything else is a bug: logged with traceback, ``INTERNAL`` to the client
      with only the request id (the client can quote it to find the log line).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED itself
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        request_id = _request_id(handler_call_details)

        def call_info() -> _Call:
            # Fresh per invocation: timing starts when the handler runs.
            return _Call(method, request_id)

        deserializer = handler.request_deserializer
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, call_info), deserializer, serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, call_info), deserializer, serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, call_info), deserializer, serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream_response(handler.stream_stream, call_info), deserializer, serializer
            )
        return handler
