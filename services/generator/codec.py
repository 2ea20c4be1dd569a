"""Protobuf <-> domain conversions for the generator: the only place that knows both sides."""

from __future__ import annotations

from philip.rpc import errors
from philip.rpc.errors import InvalidArgument, PhilipError
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
from services.generator.requests import GenerationParams, GenerationRequest

_ASPECT_RATIOS = {
    common_pb2.ASPECT_RATIO_UNSPECIFIED: "square",
    common_pb2.ASPECT_RATIO_SQUARE: "square",
    common_pb2.ASPECT_RATIO_LANDSCAPE_4_3: "landscape_4_3",
    common_pb2.ASPECT_RATIO_PORTRAIT_3_4: "portrait_3_4",
    common_pb2.ASPECT_RATIO_WIDE_16_9: "wide_16_9",
    common_pb2.ASPECT_RATIO_TALL_9_16: "tall_9_16",
}
_ASPECT_RATIOS_PB = {name: value for value, name in _ASPECT_RATIOS.items() if value}
_PREVIEW_MODES = {
    common_pb2.PREVIEW_MODE_UNSPECIFIED: "linear",
    common_pb2.PREVIEW_MODE_LINEAR: "linear",
    common_pb2.PREVIEW_MODE_VAE: "vae",
}
_PREVIEW_MODES_PB = {"linear": common_pb2.PREVIEW_MODE_LINEAR, "vae": common_pb2.PREVIEW_MODE_VAE}
_JOB_STATES = {
    JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
_ERRORS: dict[str, type[PhilipError]] = {
    cls.code: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, PhilipError)
}


def params_from_pb(pb: common_pb2.GenerationParams) -> GenerationParams:
    """The client's parameters as sent; only enum values unknown to this server are rejected here."""
    if pb.aspect_ratio not in _ASPECT_RATIOS:
        raise InvalidArgument(f"aspect_ratio {pb.aspect_ratio} is not a known AspectRatio", field="aspect_ratio")
    if pb.preview_mode not in _PREVIEW_MODES:
        raise InvalidArgument(f"preview_mode {pb.preview_mode} is not a known PreviewMode", field="preview_mode")
    return GenerationParams(
        prompt=pb.prompt,
        negative_prompt=pb.negative_prompt,
        num_images=pb.num_images,
        width=pb.width,
        height=pb.height,
        aspect_ratio=_ASPECT_RATIOS[pb.aspect_ratio],
        steps=pb.steps,
        guidance=pb.guidance if pb.HasField("guidance") else None,
        scheduler=pb.scheduler,
        seed=pb.seed if pb.HasField("seed") else None,
        preview_every=pb.preview_every,
        style=pb.style,
        adapter_ids=tuple(pb.adapter_ids),
        preview_mode=_PREVIEW_MODES[pb.preview_mode],
    )


def params_to_pb(params: GenerationParams) -> common_pb2.GenerationParams:
    """The inverse of :func:`params_from_pb` (unset optionals stay unset)."""
    pb = common_pb2.GenerationParams(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        num_images=params.num_images,
        width=params.width,
        height=params.height,
        aspect_ratio=_ASPECT_RATIOS_PB[params.aspect_ratio],
        steps=params.steps,
        scheduler=params.scheduler,
        preview_every=params.preview_every,
        style=params.style,
        adapter_ids=list(params.adapter_ids),
        preview_mode=_PREVIEW_MODES_PB[params.preview_mode],
    )
    if params.guidance is not None:
        pb.guidance = params.guidance
    if params.seed is not None:
        pb.seed = params.seed
    return pb


def request_to_pb(request: GenerationRequest) -> common_pb2.GenerationParams:
    """Resolved parameters. ``style`` is left empty because the prompts already contain it, so
    sending these params back reproduces the same images."""
    return common_pb2.GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_images=request.num_images,
        width=request.width,
        height=request.height,
        aspect_ratio=_ASPECT_RATIOS_PB[request.aspect_ratio],
        steps=request.steps,
        guidance=request.guidance,
        scheduler=request.scheduler,
        seed=request.seed,
        preview_every=request.preview_every,
        adapter_ids=list(request.adapter_ids),
        preview_mode=_PREVIEW_MODES_PB[request.preview_mode],
    )


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


def error_from_code(code: str, message: str) -> PhilipError:
    """The domain exception for a status code name (e.g. one reported by an upstream service)."""
    cls = _ERRORS.get(code, PhilipError)
    return cls(message) if cls.code == code else PhilipError(message)
