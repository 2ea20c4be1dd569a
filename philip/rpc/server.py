"""gRPC server bootstrap shared by every PHiLIP service.

One place decides message limits, keepalive, health checking, reflection, error
mapping and graceful shutdown, so services only register their servicers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from philip.logs import get_logger
from philip.rpc.interceptor import ErrorInterceptor
from philip.settings import Settings

RegisterFn = Callable[[aio.Server], None]
MIB = 1024 * 1024

log = get_logger("philip.rpc.server")


def server_options(max_message_mb: int, *, max_connection_age_ms: int | None = None) -> list[tuple[str, Any]]:
    """Channel arguments for a PHiLIP server."""
    limit = max_message_mb * MIB
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients ping every 30 s even when idle; without this the server's default
        # (5 min) would answer those pings with GOAWAY "too_many_pings".
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # grpc sets SO_REUSEPORT by default, which lets a second server silently share a
        # busy port; we would rather fail loudly on a port clash.
        ("grpc.so_reuseport", 0),
    ]
    if max_connection_age_ms is not None:
        # Forces clients to reconnect (and re-resolve DNS) so new replicas get traffic.
        options.append(("grpc.max_connection_age_ms", max_connection_age_ms))
    return options


def _bind(server: aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:  # grpc raises when the address cannot be bound
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if port == 0:  # older grpc reports a failed bind as port 0
        raise OSError(f"cannot bind gRPC server to {address}")
    return port


class GrpcServer:
    """An asyncio gRPC server with health, reflection and the error interceptor.

    ``services`` pairs each full service name (``"philip.v1.Generator"``) with a
    function that adds its servicer, e.g. ``lambda s: add_GeneratorServicer_to_server(impl, s)``.
    """

    def __init__(
        self,
        settings: Settings,
        services: Sequence[tuple[str, RegisterFn]],
        *,
        maximum_concurrent_rpcs: int | None = None,
        max_connection_age_ms: int | None = None,
        interceptors: Sequence[aio.ServerInterceptor] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials  # TLS on the port (philip.rpc.tls); None: plaintext
        self.services = list(services)
        self.maximum_concurrent_rpcs = maximum_concurrent_rpcs
        self.max_connection_age_ms = max_connection_age_ms
        self.extra_interceptors = list(interceptors)
        self.health = health.aio.HealthServicer()
        self.port: int = settings.server.port  # the bound port once started (useful with port 0)
        self.health_port: int | None = settings.server.health_port
        self._server: aio.Server | None = None
        self._health_server: aio.Server | None = None
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients can dial once started."""
        return f"{self.settings.server.host}:{self.port}"

    @property
    def service_names(self) -> list[str]:
        return [name for name, _ in self.services]

    async def start(self) -> None:
        """Build, bind and start the server; mark every service SERVING."""
        if self._server is not None:
            raise RuntimeError("server already started")
        server = aio.server(
            # The error interceptor runs first so it also sees failures of later interceptors.
            interceptors=[ErrorInterceptor(), *self.extra_interceptors],
            options=server_options(self.settings.server.max_message_mb,
                                   max_connection_age_ms=self.max_connection_age_ms),
            maximum_concurrent_rpcs=self.maximum_concurrent_rpcs,
        )
        for _, register in self.services:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        self.port = _bind(server, f"{self.settings.server.host}:{self.settings.server.port}", self.credentials)
        if self.settings.server.health_port is not None:
            # Its own server, so that this plaintext port answers health checks and nothing else.
            self._health_server = aio.server(options=server_options(1))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            own = self.settings.server
            self.health_port = _bind(self._health_server, f"{own.host}:{own.health_port}", None)
            await self._health_server.start()
        await server.start()
        self._server = server
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("server.started", address=self.address, services=self.service_names, tls=self.credentials is not None,
                 health_port=self.health_port)

    async def set_serving(self, service: str, serving: bool) -> None:
        """Readiness toggle for one service ("" = the whole server); ignored once stopping."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(service, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING first, then drain in-flight calls for ``grace_s``.

        Idempotent: concurrent or repeated calls wait for the same shutdown.
        """
        if self._stop_task is None:
            grace = self.settings.server.grace_s if grace_s is None else grace_s
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        # Shielded so that cancelling one waiter (e.g. a timed-out caller) does not abort the drain.
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        # Flip health before closing listeners so load balancers stop routing to us
        # while in-flight work is still allowed to finish.
        await self.health.enter_graceful_shutdown()
        if self._server is None:
            return
        log.info("server.stopping", address=self.address, grace_s=grace)
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        log.info("server.stopped", address=self.address)

    async def wait(self) -> None:
        """Block until the server has terminated (after :meth:`stop`)."""
        if self._server is None:
            raise RuntimeError("server not started")
        await self._server.wait_for_termination()
        if self._stop_task is not None:
            await self._stop_task  # let the shutdown log lines and health flip complete

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Make SIGTERM/SIGINT start one graceful stop; later signals are ignored."""
        loop = loop or asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop_task is not None:
            log.info("server.signal_ignored", signal=sig.name, reason="already stopping")
            return
        log.info("server.signal", signal=sig.name)
        self._stop_task = asyncio.ensure_future(self._stop(self.settings.server.grace_s))

    async def serve(self) -> None:
        """Start, stop gracefully on SIGTERM/SIGINT, and return once terminated."""
        await self.start()
        self.install_signal_handlers()
        await self.wait()

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(0 if exc_info[0] is not None else None)


__all__ = ["MIB", "GrpcServer", "RegisterFn", "server_options"]
