"""The served model's description (GeneratorService.GetModelInfo), asked once per gateway process.

The model is fixed for a generator's life and every replica serves the same folder, so one answer serves every
caller: GetModelInfo on both edges, and plain rounds' compute (their steps when a request leaves them unset)."""

from __future__ import annotations

import asyncio

from grpc import aio

from philip.generation.requests import DEFAULT_GUIDANCE, DEFAULT_STEPS
from philip.rpc.errors import PhilipError
from philip.v1 import generator_pb2, generator_pb2_grpc
from services.gateway.upstream_rpc import from_rpc, metadata


class ModelInfoCache:
    """The generator's GetModelInfo answer, fetched on first use; failures are not cached (the next call asks)."""

    def __init__(self, generator: generator_pb2_grpc.GeneratorServiceStub, *, timeout_s: float = 10.0) -> None:
        self.generator = generator
        self.timeout_s = timeout_s
        self._info: generator_pb2.ModelInfo | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> generator_pb2.ModelInfo:
        """The answer; the generator's status (UNAVAILABLE, ...) as the domain error of the same code."""
        async with self._lock:  # callers at start-up wait for one call rather than each making theirs
            if self._info is None:
                try:
                    self._info = await self.generator.GetModelInfo(generator_pb2.GetModelInfoRequest(),
                                                                   timeout=self.timeout_s, metadata=metadata())
                except aio.AioRpcError as exc:
                    raise from_rpc(exc, "generator") from None
            return self._info

    async def step_defaults(self) -> tuple[int, float]:
        """The model's default steps and guidance; SD-1.x's from a generator older than GetModelInfo."""
        try:
            info = await self.get()
        except PhilipError:  # compute figures must not fail a round the generator already ran
            return DEFAULT_STEPS, DEFAULT_GUIDANCE
        return info.defaults.steps or DEFAULT_STEPS, info.defaults.guidance


__all__ = ["ModelInfoCache"]
