"""Process entry point: run the generator, the refiner, the personalizer, the gateway, or all four.

``all`` is the embedded mode for a laptop or a single pod: generator, refiner and personalizer
listen on ephemeral loopback ports and the gateway (on ``settings.port``) dials them, so the code
path is the same as in a split deployment. A personalizer process also runs one training worker.
SIGTERM/SIGINT stop the gateway first (it stops taking
calls, drains them and fails the session steps still running), then the workers, then the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

from philip.logs import configure_logging, get_logger
from philip.metrics import serve_metrics
from philip.rpc.auth import ApiKeys, AuthInterceptor, TenantInterceptor
from philip.rpc.client import make_channel
from philip.rpc.server import GrpcServer
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
    ``store`` overrides the one named by ``settings.redis_url`` (and is then not closed here).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if role == "gateway" and (settings.generator_addr is None or settings.refiner_addr is None):
        raise ValueError("the gateway role needs PHILIP_GENERATOR_ADDR and PHILIP_REFINER_ADDR; "
                         "use role 'all' to embed the workers")
    stop = stop or asyncio.Event()
    addresses: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: gateway, workers, store
        if store is None:
            store = open_store(settings.redis_url, memory_mb=settings.memory_store_mb)
            stack.push_async_callback(store.close)
        # mTLS between separate processes; `all` keeps its in-process services on plaintext loopback.
        tls_in = server_credentials(settings) if role != "all" else None
        tls_out = channel_credentials(settings) if role != "all" else None
        generator_addr = settings.generator_addr
        if role in ("generator", "all"):
            generator = await asyncio.to_thread(generator_server.open_generator, settings, store)
            stack.push_async_callback(generator.close)
            own = settings if role == "generator" else _in_process(settings)
            server = GrpcServer(own, generator_server.build(settings, store, generator=generator),
                                interceptors=[TenantInterceptor()], credentials=tls_in)
            await server.start()
            stack.push_async_callback(server.stop)
            addresses["generator"] = generator_addr = server.address
        refiner_addr = settings.refiner_addr
        if role in ("refiner", "all"):
            refiner = await asyncio.to_thread(refiner_server.open_refiner, settings)
            stack.push_async_callback(refiner.close)
            own = settings if role == "refiner" else _in_process(settings)
            server = GrpcServer(own, refiner_server.build(settings, refiner=refiner),
                                interceptors=[TenantInterceptor()], credentials=tls_in)
            await server.start()
            stack.push_async_callback(server.stop)
            addresses["refiner"] = refiner_addr = server.address
        personalizer_addr = settings.personalizer_addr
        if role in ("personalizer", "all"):
            personalizer = await asyncio.to_thread(personalizer_server.open_personalizer, settings, store)
            worker = personalizer_server.WorkerTask(personalizer, settings)
            stack.push_async_callback(worker.close)  # after the server: a running job goes back to the queue
            own = settings if role == "personalizer" else _in_process(settings)
            server = GrpcServer(own, personalizer_server.build(personalizer), interceptors=[TenantInterceptor()],
                                credentials=tls_in)
            await server.start()
            stack.push_async_callback(server.stop)
            addresses["personalizer"] = personalizer_addr = server.address
        if role in ("gateway", "all"):
            assert generator_addr is not None and refiner_addr is not None
            generator_channel = make_channel(generator_addr, [gateway_server.GENERATOR_SERVICE],
                                             max_message_mb=settings.max_message_mb, credentials=tls_out)
            stack.push_async_callback(generator_channel.close)
            refiner_channel = make_channel(refiner_addr, [gateway_server.REFINER_SERVICE],
                                           max_message_mb=settings.max_message_mb, credentials=tls_out)
            stack.push_async_callback(refiner_channel.close)
            personalizer_channel = None
            if personalizer_addr is not None:
                personalizer_channel = make_channel(personalizer_addr, [gateway_server.PERSONALIZER_SERVICE],
                                                    max_message_mb=settings.max_message_mb, credentials=tls_out)
                stack.push_async_callback(personalizer_channel.close)
            sessions = gateway_server.open_sessions(settings, store, generator_channel, refiner_channel)
            # Runs after the gateway has stopped taking calls: running steps get the grace, then fail.
            stack.push_async_callback(sessions.close, settings.grace_s)
            core = gateway_server.open_core(settings, store, generator_channel, sessions, personalizer_channel)
            stack.push_async_callback(core.generations.close)
            keys = _api_keys(settings)
            gateway = GrpcServer(settings, gateway_server.build(core),
                                 interceptors=[AuthInterceptor(keys)] if keys is not None else [])
            await gateway.start()
            stack.push_async_callback(gateway.stop)
            addresses["gateway"] = gateway.address
            if settings.http_port:
                edge = open_http_edge(settings, core, keys)
                await edge.start()
                stack.push_async_callback(edge.stop)  # first: not ready, streams end, then gRPC drains
                addresses["http"] = edge.address
        if settings.metrics_port is not None:
            metrics_port, stop_metrics = serve_metrics(settings.metrics_port, settings.host)
            stack.callback(stop_metrics)
            addresses["metrics"] = f"{settings.host}:{metrics_port}"
        stack.enter_context(_stop_on_signals(stop))
        log.info("app.serving", role=role, **addresses)
        if on_ready is not None:
            on_ready(addresses)
        await stop.wait()
        log.info("app.stopping", role=role)


def _api_keys(settings: Settings) -> ApiKeys | None:
    """The gateway's API keys (both edges use the same), or None for an open gateway."""
    if settings.api_keys_file is None:
        log.warning("gateway.open", why="no PHILIP_API_KEYS_FILE: every caller is the same tenant")
        return None
    keys = ApiKeys.load(settings.api_keys_file)
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
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(serve(role, settings))


if __name__ == "__main__":
    main()
