"""Protobuf <-> domain conversions for the personalizer: the only place that knows both sides."""

from __future__ import annotations

from philip.v1 import common_pb2, personalizer_pb2
from services.personalizer.records import (
    Adapter,
    AdapterReady,
    JobChanged,
    SamplePreview,
    StepDone,
    TrainingEvent,
    TrainingJob,
    TrainingState,
)
from services.personalizer.requests import AdapterRequest

_METHODS = {
    personalizer_pb2.ADAPTER_METHOD_UNSPECIFIED: "lora",
    personalizer_pb2.ADAPTER_METHOD_LORA: "lora",
    personalizer_pb2.ADAPTER_METHOD_TEXTUAL_INVERSION: "textual_inversion",
}
_METHOD_PB = {"lora": personalizer_pb2.ADAPTER_METHOD_LORA,
              "textual_inversion": personalizer_pb2.ADAPTER_METHOD_TEXTUAL_INVERSION}
_STATES = {TrainingState.QUEUED: common_pb2.JOB_STATE_QUEUED, TrainingState.RUNNING: common_pb2.JOB_STATE_RUNNING,
           TrainingState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED, TrainingState.FAILED: common_pb2.JOB_STATE_FAILED,
           TrainingState.CANCELLED: common_pb2.JOB_STATE_CANCELLED}


def request_from_pb(pb: personalizer_pb2.CreateAdapterRequest) -> AdapterRequest:
    return AdapterRequest(tuple(pb.reference_images), pb.token, pb.class_word,
                          _METHODS.get(pb.method, f"unknown method {pb.method}"), pb.steps, pb.rank)


def job_to_pb(job: TrainingJob) -> personalizer_pb2.TrainingJob:
    return personalizer_pb2.TrainingJob(
        job_id=job.job_id, state=_STATES[job.state], step=job.step, total_steps=job.steps, token=job.token,
        method=_METHOD_PB[job.method], adapter_id=job.adapter_id, error=job.error, created_ms=job.created_ms,
        attempts=job.attempts)


def adapter_to_pb(adapter: Adapter) -> personalizer_pb2.Adapter:
    return personalizer_pb2.Adapter(
        adapter_id=adapter.adapter_id, token=adapter.token, class_word=adapter.class_word,
        method=_METHOD_PB[adapter.method], created_ms=adapter.created_ms, job_id=adapter.job_id, steps=adapter.steps)


def event_to_pb(event: TrainingEvent) -> personalizer_pb2.TrainingEvent:
    if isinstance(event, JobChanged):
        return personalizer_pb2.TrainingEvent(job=job_to_pb(event.job))
    if isinstance(event, StepDone):
        return personalizer_pb2.TrainingEvent(progress=personalizer_pb2.TrainingProgress(
            step=event.step, total_steps=event.total, loss=event.loss, resumed_from=event.resumed_from))
    if isinstance(event, SamplePreview):
        return personalizer_pb2.TrainingEvent(preview=personalizer_pb2.TrainingPreview(
            step=event.step, image=common_pb2.Image(png=event.png, width=event.width, height=event.height)))
    assert isinstance(event, AdapterReady)
    return personalizer_pb2.TrainingEvent(adapter=adapter_to_pb(event.adapter))


__all__ = ["adapter_to_pb", "event_to_pb", "job_to_pb", "request_from_pb"]
