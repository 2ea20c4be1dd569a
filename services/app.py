"""Process entry point: run the generator, the refiner, the personalizer, the gateway, or all four.

``all`` is the embedded mode for a laptop or a single pod: generator, refiner and personalizer
listen on ephemeral loopback ports and the gateway (on ``settings.server.port``) dials them, so the code
path is the same as in a split deployment. A personalizer process also runs one training worker.
With auth on, the workers serve only the gateway (philip/rpc/internal.py). SIGTERM/SIGINT stop the
gateway first (it stops taking calls, drains them and fails the session steps still running), then
the workers, then the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

import grpc
from grpc import aio

from philip.logs import configure_logging, get_logger
from philip.metrics import serve_metrics
from philip.rpc.auth import ApiKeys, AuthInterceptor
from philip.rpc.client import make_channel
from philip.rpc.internal import InternalAuth, internal_auth, server_interceptor, upstream_interceptors
from philip.rpc.server import GrpcServer, RegisterFn
from philip.rpc.tls import channel_credentials, server_credentials
from philip.settings import Settings
from philip.store import Store, open_store
from services.gateway import server as gateway_server
from services.gateway.http import open_http_edge
from services.generator import server as generator_server
from services.personalizer import server as personalizer_server
from services.refiner import server as refiner_server

ROLES = ("generator", "refiner", "personalizer", "gateway", "all")

log = get_logger("services.app")


async def serve(
    role: str,
    settings: Settings,
    *,
    store: Store | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, str]], None] | None = None,
) -> None:
    """Serve ``role`` until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully.

    ``on_ready`` receives the bound addresses ({"generator": ..., "personalizer": ..., "gateway": ...});
    ``store`` overrides the one named by ``settings.store.redis_url`` (and is then not closed here).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if role == "gateway" and (settings.upstreams.generator_addr is None or settings.upstreams.refiner_addr is None):
        raise ValueError("the gateway role needs PHILIP_GENERATOR_ADDR and PHILIP_REFINER_ADDR; "
                         "use role 'all' to embed the workers")
    internal = internal_auth(role, settings)  # before anything loads: a misconfigured pod fails at once
    stop = stop or asyncio.Event()
    addresses: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: gateway, workers, store
        if store is None:
            store = open_store(settings.store.redis_url, memory_mb=settings.store.memory_store_mb,
                               max_connections=settings.store.redis_max_connections)
            stack.push_async_callback(store.close)
        await _start_workers(stack, role, settings, store, internal, addresses)
        if role in ("gateway", "all"):
            await _start_gateway(stack, role, settings, store, internal, addresses)
        if settings.server.metrics_port is not None:
            metrics_port, stop_metrics = serve_metrics(settings.server.metrics_port, settings.server.host)
            stack.callback(stop_metrics)
            addresses["metrics"] = f"{settings.server.host}:{metrics_port}"
        stack.enter_context(_stop_on_signals(stop))
        log.info("app.serving", role=role, **addresses)
        if on_ready is not None:
            on_ready(addresses)
        await stop.wait()
        log.info("app.stopping", role=role)


async def _start_workers(stack: contextlib.AsyncExitStack, role: str, settings: Settings, store: Store,
                         internal: InternalAuth | None, addresses: dict[str, str]) -> None:
    """The generator, refiner and personalizer ``role`` runs, their addresses into ``addresses``."""
    # mTLS between separate processes; `all` keeps its in-process services on plaintext loopback.
    tls_in = server_credentials(settings) if role != "all" else None
    own = settings if role != "all" else _in_process(settings)
    guard = server_interceptor(internal) if role != "gateway" else None
    if role in ("generator", "all"):
        generator = await asyncio.to_thread(generator_server.open_generator, settings, store)
        stack.push_async_callback(generator.close)
        addresses["generator"] = await _start_server(
            stack, own, generator_server.build(settings, store, generator=generator), guard, tls_in)
    if role in ("refiner", "all"):
        refiner = await asyncio.to_thread(refiner_server.open_refiner, settings)
        stack.push_async_callback(refiner.close)
        addresses["refiner"] = await _start_server(stack, own, refiner_server.build(settings, refiner=refiner),
                                                   guard, tls_in)
    if role in ("personalizer", "all"):
        personalizer = await asyncio.to_thread(personalizer_server.open_personalizer, settings, store)
        worker = personalizer_server.WorkerTask(personalizer, settings)
        stack.push_async_callback(worker.close)  # after the server: a running job goes back to the queue
        addresses["personalizer"] = await _start_server(stack, own, personalizer_server.build(personalizer),
                                                        guard, tls_in)


async def _start_server(stack: contextlib.AsyncExitStack, settings: Settings, services: list[tuple[str, RegisterFn]],
                        guard: aio.ServerInterceptor | None, credentials: grpc.ServerCredentials | None) -> str:
    server = GrpcServer(settings, services, interceptors=[guard] if guard is not None else [], credentials=credentials)
    await server.start()
    stack.push_async_callback(server.stop)
    return server.address


async def _start_gateway(stack: contextlib.AsyncExitStack, role: str, settings: Settings, store: Store,
                         internal: InternalAuth | None, addresses: dict[str, str]) -> None:
    """The gateway's channels to the internal services, its domain objects, its gRPC and HTTP edges."""
    generator_addr = addresses.get("generator", settings.upstreams.generator_addr)
    refiner_addr = addresses.get("refiner", settings.upstreams.refiner_addr)
    personalizer_addr = addresses.get("personalizer", settings.upstreams.personalizer_addr)
    assert generator_addr is not None and refiner_addr is not None
    tls_out = channel_credentials(settings) if role != "all" else None
    upstream = upstream_interceptors(internal)  # every upstream call proves it is the gateway's

    def channel(address: str, service: str) -> aio.Channel:
        opened = make_channel(address, [service], max_message_mb=settings.server.max_message_mb, credentials=tls_out,
                              interceptors=upstream)
        stack.push_async_callback(opened.close)
        return opened

    generator_channel = channel(generator_addr, gateway_server.GENERATOR_SERVICE)
    refiner_channel = channel(refiner_addr, gateway_server.REFINER_SERVICE)
    personalizer_channel = (channel(personalizer_addr, gateway_server.PERSONALIZER_SERVICE)
                            if personalizer_addr is not None else None)
    sessions = gateway_server.open_sessions(settings, store, generator_channel, refiner_channel)
    # Runs after the gateway has stopped taking calls: running steps get the grace, then fail.
    stack.push_async_callback(sessions.close, settings.server.grace_s)
    core = gateway_server.open_core(settings, store, generator_channel, sessions, personalizer_channel)
    stack.push_async_callback(core.generations.close)
    keys = _api_keys(settings)
    gateway = GrpcServer(settings, gateway_server.build(core),
                         interceptors=[AuthInterceptor(keys)] if keys is not None else [])
    await gateway.start()
    stack.push_async_callback(gateway.stop)
    addresses["gateway"] = gateway.address
    if settings.http.http_port:
        edge = open_http_edge(settings, core, keys)
        await edge.start()
        stack.push_async_callback(edge.stop)  # first: not ready, streams end, then gRPC drains
        addresses["http"] = edge.address


def _api_keys(settings: Settings) -> ApiKeys | None:
    """The gateway's API keys (both edges use the same), or None for an open gateway."""
    if settings.auth.api_keys_file is None:
        log.warning("gateway.open", why="no PHILIP_API_KEYS_FILE: every caller is the same tenant")
        return None
    keys = ApiKeys.load(settings.auth.api_keys_file)
    log.info("gateway.auth", keys=len(keys.by_hash), tenants=len(set(keys.by_hash.values())))
    return keys


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _in_process(settings: Settings) -> Settings:
    """Settings of a service that `all` runs beside the gateway: any free loopback port, no own health port."""
    return settings.with_(host="127.0.0.1", port=0, health_port=None)


def main(argv: list[str] | None = None) -> None:
    """``python -m services.app [generator|refiner|personalizer|gateway|all]`` with settings from PHILIP_* variables."""
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else "all"
    settings = Settings.from_env()
    configure_logging(settings.server.log_format, settings.server.log_level)
    asyncio.run(serve(role, settings))


if __name__ == "__main__":
    main()
