"""Training and managing personalization adapters through the gateway (`philip adapter ...`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from philip.v1 import common_pb2, gateway_pb2_grpc, personalizer_pb2

METHODS = {"lora": personalizer_pb2.ADAPTER_METHOD_LORA,
           "textual_inversion": personalizer_pb2.ADAPTER_METHOD_TEXTUAL_INVERSION}


class TrainingFailed(Exception):
    """The job ended without an adapter (failed or cancelled)."""


def create_request(images: list[Path], token: str, class_word: str, method: str = "lora", steps: int = 0,
                   rank: int = 0) -> personalizer_pb2.CreateAdapterRequest:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return personalizer_pb2.CreateAdapterRequest(
        reference_images=[path.read_bytes() for path in images], token=token, class_word=class_word,
        method=METHODS[method], steps=steps, rank=rank)


async def train_adapter(stub: gateway_pb2_grpc.GatewayStub, request: personalizer_pb2.CreateAdapterRequest,
                        on_event: Callable[[personalizer_pb2.TrainingEvent], None] | None = None,
                        timeout_s: float | None = None) -> personalizer_pb2.Adapter:
    """Create the job and follow it to the end; returns the adapter or raises TrainingFailed."""
    job = await stub.CreateAdapter(request, timeout=timeout_s)
    adapter = None
    last = job
    async for event in stub.WatchJob(personalizer_pb2.WatchJobRequest(job_id=job.job_id), timeout=timeout_s):
        if on_event is not None:
            on_event(event)
        kind = event.WhichOneof("event")
        if kind == "adapter":
            adapter = event.adapter
        elif kind == "job":
            last = event.job
    if adapter is None or last.state != common_pb2.JOB_STATE_SUCCEEDED:
        state = common_pb2.JobState.Name(last.state).removeprefix("JOB_STATE_").lower()
        raise TrainingFailed(f"training job {job.job_id} ended {state}: {last.error or 'no adapter'}")
    return adapter
