"""What both edges of the gateway (gRPC servicer and HTTP routes) call: one set of domain objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from philip.generation.requests import Style
from philip.rpc.auth import current_tenant
from philip.rpc.errors import FailedPrecondition
from philip.store import Store
from philip.stream_limits import StreamLimits, StreamSlot
from philip.v1 import generator_pb2, generator_pb2_grpc, personalizer_pb2_grpc
from services.gateway.generations import DetachedGenerations
from services.gateway.model_info import ModelInfoCache
from services.gateway.sessions import SessionManager


@dataclass(frozen=True, slots=True)
class GatewayCore:
    """Sessions, generation jobs (held or passed through), personalization, styles."""

    store: Store
    sessions: SessionManager
    generator: generator_pb2_grpc.GeneratorServiceStub
    generations: DetachedGenerations
    styles: Mapping[str, Style]
    personalizer: personalizer_pb2_grpc.PersonalizerServiceStub | None = None
    streams: StreamLimits = field(default_factory=StreamLimits)
    model: ModelInfoCache | None = None  # None: one of its own on ``generator`` (open_core shares the sessions')

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", ModelInfoCache(self.generator))

    async def model_info(self) -> generator_pb2.ModelInfo:
        """The served model (GetModelInfo), asked of a generator once per process."""
        assert self.model is not None  # set by __post_init__
        return await self.model.get()

    def open_stream(self) -> StreamSlot:
        """A slot for one more event stream of the caller (RESOURCE_EXHAUSTED past PHILIP_MAX_STREAMS)."""
        return self.streams.take(current_tenant())

    def personalization(self) -> personalizer_pb2_grpc.PersonalizerServiceStub:
        if self.personalizer is None:
            raise FailedPrecondition("personalization is not enabled on this gateway (set PHILIP_PERSONALIZER_ADDR)")
        return self.personalizer


__all__ = ["GatewayCore"]
