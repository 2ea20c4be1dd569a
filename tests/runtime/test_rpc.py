"""The shared gRPC runtime over a real loopback server: error mapping, health,
reflection, graceful shutdown and client retries."""

import asyncio
import io
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import structlog
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from philip.logs import configure_logging
from philip.rpc.client import make_channel, service_config, wait_ready
from philip.rpc.errors import InvalidArgument, PhilipError, ResourceExhausted, Unavailable
from philip.rpc.server import GrpcServer
from philip.rpc.status import error_details, to_rpc_status
from philip.settings import Settings

SERVICE = "philip.test.Echo"


class StoreUnavailable(Exception):
    """Stands in for philip.store's error: the interceptor matches it by class name."""


class Echo:
    """A raw-bytes test service whose request payload selects the behaviour."""

    def __init__(self) -> None:
        self.attempts: Counter[bytes] = Counter()

    def fail(self, request: bytes) -> None:
        if request == b"invalid":
            raise InvalidArgument("prompt must not be empty", field="prompt")
        if request == b"exhausted":
            raise ResourceExhausted("queue full", retry_after_s=2)
        if request == b"bug":
            raise ValueError("secret /etc/path leaked")
        if request == b"store":
            raise StoreUnavailable("redis down")

    async def unary(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self.attempts[request] += 1
        if request == b"abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler said no")
        if request.startswith(b"flaky") and self.attempts[request] <= 2:
            raise Unavailable("warming up")
        self.fail(request)
        return b"echo:" + request

    async def stream(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        count = 5 if request == b"slow" else 2
        for i in range(count):
            if request == b"slow":
                await asyncio.sleep(0.1)
            yield b"%d" % i
        self.fail(request)  # fails after messages were already sent

    async def stream_write(self, request: bytes, context: aio.ServicerContext) -> None:
        # Coroutine style (context.write) must survive the interceptor's generator wrapper.
        await context.write(b"w:" + request)
        self.fail(request)

    async def bidi(self, requests: AsyncIterator[bytes], context: aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            self.fail(request)
            yield request.upper()

    async def client_stream(self, requests: AsyncIterator[bytes], context: aio.ServicerContext) -> bytes:
        parts = [request async for request in requests]
        for part in parts:
            self.fail(part)
        return b"+".join(parts)

    def register(self, server: aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                        "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                        "StreamWrite": grpc.unary_stream_rpc_method_handler(self.stream_write),
                        "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                        "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                    },
                ),
            )
        )


@pytest.fixture
def log_buf() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    yield buf
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_philip_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
async def server(echo: Echo, log_buf: io.StringIO) -> AsyncIterator[GrpcServer]:
    srv = GrpcServer(Settings(port=0, grace_s=0.5), [(SERVICE, echo.register)])
    await srv.start()
    yield srv
    await srv.stop(0)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[aio.Channel]:
    # retries=1: error-mapping tests must see each failure exactly once.
    async with make_channel(server.address, [SERVICE], retries=1) as ch:
        await wait_ready(ch, 5)
        yield ch


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def call_unary(ch: aio.Channel, payload: bytes, **kwargs: object) -> bytes:
    return await ch.unary_unary(method("Unary"))(payload, timeout=5, **kwargs)


async def test_unary_ok_and_request_id_logged(server: GrpcServer, channel: aio.Channel, log_buf: io.StringIO) -> None:
    assert await call_unary(channel, b"hi", metadata=(("x-request-id", "req-42"),)) == b"echo:hi"
    finished = [json.loads(line) for line in log_buf.getvalue().splitlines() if "rpc.finished" in line]
    (line,) = [x for x in finished if x["method"] == method("Unary")]
    assert line["code"] == "OK" and line["request_id"] == "req-42" and line["duration_ms"] >= 0


async def test_invalid_argument_carries_field_violation(channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await call_unary(channel, b"invalid")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "prompt must not be empty"
    details = error_details(info.value)
    assert details["field_violations"] == [("prompt", "prompt must not be empty")]
    assert (details["reason"], details["domain"]) == ("InvalidArgument", "philip.v1")
    assert details["retry_after_s"] is None


async def test_resource_exhausted_carries_retry_info(channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await call_unary(channel, b"exhausted")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(info.value)
    assert details["retry_after_s"] == 2.0 and details["reason"] == "ResourceExhausted"


async def test_bug_is_internal_without_leaking_text(channel: aio.Channel, log_buf: io.StringIO) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await call_unary(channel, b"bug", metadata=(("x-request-id", "req-bug"),))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id req-bug)"
    assert "secret" not in info.value.details()
    for _ in range(100):  # the server logs rpc.finished once its handler unwinds, which may be just after
        records = [json.loads(line) for line in log_buf.getvalue().splitlines()]  # the client has the status
        if any(r["event"] == "rpc.finished" and r["code"] == "INTERNAL" for r in records):
            break
        await asyncio.sleep(0.02)
    (bug,) = [r for r in records if r["event"] == "rpc.internal_error"]
    assert "ValueError: secret /etc/path leaked" in bug["exception"] and bug["request_id"] == "req-bug"
    assert any(r["event"] == "rpc.finished" and r["code"] == "INTERNAL" for r in records)


async def test_store_unavailable_and_handler_abort(channel: aio.Channel, log_buf: io.StringIO) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await call_unary(channel, b"store")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "redis down" in info.value.details()
    with pytest.raises(aio.AioRpcError) as info:
        await call_unary(channel, b"abort")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "handler said no"  # passed through, not turned into INTERNAL
    assert '"code": "PERMISSION_DENIED"' in log_buf.getvalue()


async def test_server_stream_fails_after_messages(channel: aio.Channel) -> None:
    call = channel.unary_stream(method("Stream"))(b"invalid", timeout=5)
    received = []
    with pytest.raises(aio.AioRpcError) as info:
        async for message in call:
            received.append(message)
    assert received == [b"0", b"1"]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(info.value)["field_violations"] == [("prompt", "prompt must not be empty")]

    call = channel.unary_stream(method("StreamWrite"))(b"bug", timeout=5)
    received = []
    with pytest.raises(aio.AioRpcError) as info:
        async for message in call:
            received.append(message)
    assert received == [b"w:bug"] and info.value.code() == grpc.StatusCode.INTERNAL
    assert [m async for m in channel.unary_stream(method("StreamWrite"))(b"ok", timeout=5)] == [b"w:ok"]


async def test_bidi_and_client_stream(channel: aio.Channel) -> None:
    # Written one at a time: a request iterator would race its next write against the server's end of
    # the call, and grpc-aio reports a write after that end as INTERNAL on the client.
    call = channel.stream_stream(method("Bidi"))(timeout=5)
    received = []
    for request in (b"a", b"b"):
        await call.write(request)
        received.append(await call.read())
    assert received == [b"A", b"B"]
    await call.write(b"exhausted")
    with pytest.raises(aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_details(info.value)["retry_after_s"] == 2.0

    stream_unary = channel.stream_unary(method("ClientStream"))
    assert await stream_unary(iter([b"x", b"y"]), timeout=5) == b"x+y"
    with pytest.raises(aio.AioRpcError) as info:
        await stream_unary(iter([b"x", b"invalid"]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection(server: GrpcServer, channel: aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await server.set_serving(SERVICE, False)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    (response,) = [r async for r in call]
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_graceful_stop_drains_in_flight_stream(server: GrpcServer, channel: aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    call = channel.unary_stream(method("Stream"))(b"slow", timeout=10)
    assert await call.read() == b"0"  # the call is in flight
    started = time.perf_counter()
    stopping = asyncio.create_task(server.stop(grace_s=5))

    # Health flips before the listener goes away; the watcher sees it, then leaves.
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()

    rest = []
    while (message := await call.read()) is not aio.EOF:
        rest.append(message)
    assert rest == [b"1", b"2", b"3", b"4"]
    assert await call.code() == grpc.StatusCode.OK
    await stopping
    await server.stop()  # idempotent
    assert time.perf_counter() - started < 3  # finished well inside the 5 s grace
    with pytest.raises(aio.AioRpcError) as info:
        await call_unary(channel, b"late")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_retries_unavailable(server: GrpcServer, echo: Echo) -> None:
    async with make_channel(server.address, [SERVICE], retries=5) as ch:
        assert await call_unary(ch, b"flaky-1") == b"echo:flaky-1"
    assert echo.attempts[b"flaky-1"] == 3  # two UNAVAILABLE, then success

    async with make_channel(server.address, [SERVICE], retries=1) as ch:
        with pytest.raises(aio.AioRpcError) as info:
            await call_unary(ch, b"flaky-2")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert echo.attempts[b"flaky-2"] == 1

    async with make_channel(server.address, [SERVICE], retries=5) as ch:
        with pytest.raises(aio.AioRpcError):
            await call_unary(ch, b"invalid")  # not retryable
    assert echo.attempts[b"invalid"] == 1


async def test_wait_ready_times_out_on_dead_target() -> None:
    async with make_channel("127.0.0.1:1", [SERVICE]) as ch:
        with pytest.raises(TimeoutError, match="not ready"):
            await wait_ready(ch, 0.2)


async def test_port_clash_fails_loudly(server: GrpcServer) -> None:
    other = GrpcServer(Settings(port=server.port), [])
    with pytest.raises(OSError, match="cannot bind"):
        await other.start()


def test_status_mapping_without_server() -> None:
    status = to_rpc_status(PhilipError("plain"))
    assert status.code == grpc.StatusCode.INTERNAL and status.details == "plain"
    config = service_config(["a.B", "c.D"], retries=9)
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["maxAttempts"] == 5
    assert method_config["name"] == [{"service": "a.B"}, {"service": "c.D"}]
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "methodConfig" not in service_config(["a.B"], retries=1)


async def test_sigterm_stops_gracefully_once(server: GrpcServer, log_buf: io.StringIO) -> None:
    loop = asyncio.get_running_loop()
    server.install_signal_handlers(loop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal must not start a second stop
        await asyncio.wait_for(server.wait(), 5)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    events = [json.loads(line)["event"] for line in log_buf.getvalue().splitlines()]
    assert events.count("server.stopping") == 1 and "server.stopped" in events
