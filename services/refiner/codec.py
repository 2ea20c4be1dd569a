"""Protobuf <-> domain conversions for the refiner: the only refiner module that knows both sides."""

from __future__ import annotations

import uuid

from PIL import Image

from philip.exploration import RoundChoice, beliefs_to_pb
from philip.generation.requests import MAX_PROMPT_CHARS
from philip.images import png_bytes
from philip.rpc.errors import InvalidArgument
from philip.v1 import common_pb2, generator_pb2, refiner_pb2
from services.refiner.round_types import MAX_SEED, FeedbackImage, FeedbackRound, NoiseOrigin
from services.refiner.service import PreviewReady, RefineEvent, RoundDone, RoundStarted, StepDone
from services.refiner.upscale import UpscaledImage, UpscaleEvent, UpscaleProgress, decode_png

MAX_ROUND_ID_CHARS = 128
MAX_FEEDBACK_PIXELS = 1024 * 1024  # references are low-res round images
MAX_HISTORY_ROUNDS = 100  # the gateway's round limit per session
MAX_HISTORY_PROMPTS = 8  # images per round


def origin_from_pb(pb: refiner_pb2.NoiseOrigin, field: str) -> NoiseOrigin:
    for i, step in enumerate(pb.steps):
        if step.seed > MAX_SEED or not 0.0 <= step.diversity <= 1.0:
            raise InvalidArgument(f"{field}.steps[{i}] needs seed 0-{MAX_SEED} and diversity in [0, 1]",
                                  field=f"{field}.steps")
    if pb.seed > MAX_SEED:
        raise InvalidArgument(f"{field}.seed must be 0-{MAX_SEED}", field=f"{field}.seed")
    return NoiseOrigin(pb.seed, tuple((s.seed, float(s.diversity)) for s in pb.steps))


def feedback_from_pb(images: list[refiner_pb2.FeedbackImage], name: str) -> list[FeedbackImage]:
    """Decoded, validated references; ``name`` is ``liked`` or ``disliked`` (for error fields)."""
    out = []
    for i, pb in enumerate(images):
        field = f"{name}[{i}]"
        if not pb.image.id:
            raise InvalidArgument(f"{field}.image.id is required (it keys the reference cache)",
                                  field=f"{field}.image.id")
        picture = decode_png(pb.image.png, max_pixels=MAX_FEEDBACK_PIXELS, field=f"{field}.image.png")
        out.append(FeedbackImage(pb.image.id, picture, origin_from_pb(pb.origin, f"{field}.origin"), pb.reference))
    return out


def history_from_pb(history: list[refiner_pb2.RoundChoice]) -> list[RoundChoice]:
    """The session's earlier rounds and choices, checked: 0-100 rounds of 1-8 prompts, indices in range."""
    if len(history) > MAX_HISTORY_ROUNDS:
        raise InvalidArgument(f"history takes 0-{MAX_HISTORY_ROUNDS} rounds, got {len(history)}", field="history")
    out = []
    for i, pb in enumerate(history):
        field = f"history[{i}]"
        prompts = tuple(pb.prompts)
        if not 1 <= len(prompts) <= MAX_HISTORY_PROMPTS or any(not 1 <= len(p) <= MAX_PROMPT_CHARS for p in prompts):
            raise InvalidArgument(f"{field}.prompts takes 1-{MAX_HISTORY_PROMPTS} prompts of 1-{MAX_PROMPT_CHARS} "
                                  "characters", field=f"{field}.prompts")
        picks = []
        for name in ("liked", "disliked"):
            index = getattr(pb, name)
            if not -1 <= index < len(prompts):
                raise InvalidArgument(f"{field}.{name} must be -1 (none) or 0-{len(prompts) - 1}, got {index}",
                                      field=f"{field}.{name}")
            picks.append(index if index >= 0 else None)
        out.append(RoundChoice(prompts, picks[0], picks[1]))
    return out


def round_id_from_pb(round_id: str) -> str:
    if len(round_id) > MAX_ROUND_ID_CHARS:
        raise InvalidArgument(f"round_id takes 0-{MAX_ROUND_ID_CHARS} characters, got {len(round_id)}",
                              field="round_id")
    return round_id or f"round_{uuid.uuid4().hex}"


def _picture(image: Image.Image, index: int = 0, seed: int = 0, image_id: str = "") -> common_pb2.Image:
    return common_pb2.Image(id=image_id, png=png_bytes(image), width=image.width, height=image.height, seed=seed,
                            index=index)


def _origin_to_pb(origin: NoiseOrigin) -> refiner_pb2.NoiseOrigin:
    return refiner_pb2.NoiseOrigin(seed=origin.seed, steps=[refiner_pb2.SteerStep(seed=s, diversity=d)
                                                           for s, d in origin.steps])


def result_to_pb(result: FeedbackRound) -> refiner_pb2.RoundResult:
    c = result.compute
    return refiner_pb2.RoundResult(
        images=[refiner_pb2.RoundImage(image=_picture(i.image, i.index, i.seed, f"img_{uuid.uuid4().hex}"),
                                       origin=_origin_to_pb(i.origin), steered_from=i.steered_from or "",
                                       prompt=i.prompt)
                for i in result.images],
        compute=refiner_pb2.RoundCompute(steps=c.steps, main_image_evals=c.main_image_evals,
                                         reference_image_evals=c.reference_image_evals),
        learned=beliefs_to_pb(result.learned),
    )


def event_to_pb(event: RefineEvent, batch_size: int) -> refiner_pb2.RefineEvent:
    if isinstance(event, RoundStarted):
        return refiner_pb2.RefineEvent(started=generator_pb2.Started(batch_size=batch_size))
    if isinstance(event, StepDone):
        return refiner_pb2.RefineEvent(progress=generator_pb2.Progress(step=event.step,
                                                                       total_steps=event.total_steps))
    if isinstance(event, PreviewReady):
        return refiner_pb2.RefineEvent(preview=generator_pb2.Preview(
            step=event.step, images=[_picture(img, n) for n, img in enumerate(event.images)]))
    if isinstance(event, RoundDone):
        return refiner_pb2.RefineEvent(result=result_to_pb(event.result))
    raise TypeError(f"not a refine event: {event!r}")


def upscale_event_to_pb(event: UpscaleEvent) -> refiner_pb2.UpscaleEvent:
    if isinstance(event, UpscaleProgress):
        return refiner_pb2.UpscaleEvent(progress=refiner_pb2.UpscaleProgress(done=event.done, total=event.total))
    assert isinstance(event, UpscaledImage)
    return refiner_pb2.UpscaleEvent(image=common_pb2.Image(png=event.png, width=event.width, height=event.height))
