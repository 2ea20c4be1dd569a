"""The HTTP edge's server: uvicorn on the gateway's own asyncio loop, beside the grpc.aio server.

``uvicorn.Server.serve`` would install its own SIGTERM/SIGINT handlers; the process's signals belong
to ``services/app.py`` (one shutdown order for both edges), so the server is started and stopped by
hand: startup, the tick loop as a task, then shutdown with the gateway's grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn

from philip.logs import get_logger
from services.gateway.http.api import EdgeState

log = get_logger("services.gateway.http")


class HttpEdge:
    def __init__(self, app: Any, state: EdgeState, host: str, port: int, grace_s: float) -> None:
        self.state = state
        self.config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None, access_log=False,
                                     timeout_graceful_shutdown=max(1, round(grace_s)), proxy_headers=False,
                                     server_header=False, timeout_keep_alive=30)
        self.server = uvicorn.Server(self.config)
        self._loop: asyncio.Task[None] | None = None
        self.address = ""

    async def start(self) -> None:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # our own log line per request instead
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        try:
            await self.server.startup()
        except SystemExit:  # uvicorn's answer to a port it cannot bind
            self.server.should_exit = True
        if self.server.should_exit:
            raise RuntimeError(f"the HTTP edge could not listen on {self.config.host}:{self.config.port}")
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        self._loop = asyncio.get_running_loop().create_task(self.server.main_loop(), name="http-edge")
        self.state.ready = True
        log.info("http.serving", address=self.address)

    async def stop(self) -> None:
        """Not ready at once, event streams end, then in-flight requests get the grace."""
        self.state.closing.set()
        self.server.should_exit = True
        if self._loop is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.server.shutdown()


__all__ = ["HttpEdge"]
