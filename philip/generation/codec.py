"""Generation parameters <-> protobuf: the one codec of ``GenerationParams`` every service uses."""

from __future__ import annotations

from philip.generation.requests import GenerationParams, GenerationRequest
from philip.rpc.errors import InvalidArgument
from philip.v1 import common_pb2

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
    return params_to_pb(GenerationParams(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_images=request.num_images,
        width=request.width, height=request.height, aspect_ratio=request.aspect_ratio, steps=request.steps,
        guidance=request.guidance, scheduler=request.scheduler, seed=request.seed,
        preview_every=request.preview_every, adapter_ids=request.adapter_ids, preview_mode=request.preview_mode,
    ))


__all__ = ["params_from_pb", "params_to_pb", "request_to_pb"]
