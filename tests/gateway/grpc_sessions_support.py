"""What the gRPC session tests share (their deployment fixture is in conftest.py): the deployment's handles and
the helpers that drive a Session call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, refiner_pb2, refiner_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "philip-tiny"
UPSCALER = REPO / "models" / "philip-tiny-x4.onnx"
REDIS_URL = "redis://127.0.0.1:6379/15"
Event = gateway_pb2.SessionEvent
Msg = gateway_pb2.SessionClientMessage


class Deployment:
    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses
        self.channel = aio.insecure_channel(addresses["gateway"])
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.refiner_channel = aio.insecure_channel(addresses["refiner"])
        self.refiner = refiner_pb2_grpc.RefinerServiceStub(self.refiner_channel)


# FABRIC at the paper's weights, no exploration: what these tests of FABRIC rounds were written for
# (philip-tiny's own defaults explore instead; a session without weights gets those).
FABRIC = refiner_pb2.FeedbackWeights(explore=0.0, max_weight=0.8, min_weight=0.1)


def start(prompt: str = "a red circle on a blue background", weights: refiner_pb2.FeedbackWeights | None = FABRIC,
          **fields: Any) -> Msg:
    params = common_pb2.GenerationParams(prompt=prompt, **{"num_images": 4, "steps": 6, "seed": 11,
                                                           "preview_every": 3, **fields})
    return Msg(start=gateway_pb2.SessionStart(params=params, weights=weights))


async def read_until(call: Any, kind: str, *, round_number: int | None = None, timeout: float = 60.0) -> list[Event]:
    """Events of a Session call up to and including the first ``kind`` (of ``round_number``)."""
    seen: list[Event] = []

    async def read() -> None:
        while True:
            event = await call.read()
            assert event is not aio.EOF, f"stream ended before {kind}; saw {[e.WhichOneof('event') for e in seen]}"
            seen.append(event)
            if event.WhichOneof("event") == kind and (round_number is None or event.round == round_number):
                return

    await asyncio.wait_for(read(), timeout)
    return seen


def kinds(events: list[Event]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def _read_error(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        while await asyncio.wait_for(call.read(), 30) is not aio.EOF:
            pass
    return info.value
