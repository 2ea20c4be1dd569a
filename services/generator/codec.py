"""Protobuf <-> domain conversions for the generator: the only place that knows both sides."""

from __future__ import annotations

from philip.generation.codec import request_to_pb
from philip.models.model_info import ModelInfo
from philip.rpc.errors import PhilipError, error_from_code
from philip.v1 import common_pb2, generator_pb2
from services.generator.events import (
    Cancelled,
    Failed,
    GeneratedImage,
    JobEvent,
    Preview,
    Progress,
    Queued,
    Result,
    Started,
)
from services.generator.jobs import JobState, JobView

_JOB_STATES = {
    JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
def image_to_pb(image: GeneratedImage) -> common_pb2.Image:
    return common_pb2.Image(id=image.id, png=image.png, width=image.width, height=image.height, seed=image.seed,
                            index=image.index)


def event_to_pb(job_id: str, event: JobEvent) -> generator_pb2.GenerateEvent:
    pb = generator_pb2.GenerateEvent(job_id=job_id)
    match event:
        case Queued(position=position):
            pb.queued.position = position
        case Started(batch_size=batch_size):
            pb.started.batch_size = batch_size
        case Progress(step=step, total_steps=total):
            pb.progress.step, pb.progress.total_steps = step, total
        case Preview(step=step, images=images):
            pb.preview.step = step
            pb.preview.images.extend(image_to_pb(image) for image in images)
        case Result(images=images):
            pb.result.images.extend(image_to_pb(image) for image in images)
        case Failed(code=code, message=message):
            pb.error.code, pb.error.message = code, message
        case Cancelled(reason=reason):
            pb.cancelled.reason = reason
    return pb


def encode_event(job_id: str, event: JobEvent) -> bytes:
    """The bytes a job's store stream holds for ``event``: a serialized GenerateEvent."""
    return event_to_pb(job_id, event).SerializeToString()


def job_to_pb(job: JobView) -> generator_pb2.Job:
    return generator_pb2.Job(
        job_id=job.job_id,
        state=_JOB_STATES[job.state],
        params=request_to_pb(job.request),
        step=job.step,
        total_steps=job.total_steps,
        images=[image_to_pb(image) for image in job.images],
        error=job.error,
        created_ms=job.created_ms,
        finished_ms=job.finished_ms,
    )


def error_for(failure: Failed) -> PhilipError:
    """The exception that ends a stream after its ``error`` event, with the same code and message."""
    return error_from_code(failure.code, failure.message)


def model_info_to_pb(info: ModelInfo) -> generator_pb2.ModelInfo:
    d, f = info.defaults, info.feedback
    return generator_pb2.ModelInfo(
        family=info.family, label=info.label, name=info.name, pipeline_class=info.pipeline_class, dtype=info.dtype,
        defaults=generator_pb2.ModelDefaults(steps=d.steps, min_steps=d.min_steps, max_steps=d.max_steps,
                                             guidance=d.guidance, scheduler=d.scheduler,
                                             timestep_spacing=d.timestep_spacing, native_size=d.native_size,
                                             max_size=d.max_size),
        schedulers=info.schedulers,
        feedback=generator_pb2.FeedbackCapability(fabric=f.fabric, dislikes_act=f.dislikes_act,
                                                  exploration=f.exploration, seed_steering=f.seed_steering,
                                                  note=f.note),
        adapter_methods=info.adapter_methods, preview_kinds=info.preview_kinds)
