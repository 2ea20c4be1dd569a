"""Protobuf <-> domain conversions for sessions: the only gateway module that knows both sides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from philip.activity import Activity
from philip.exploration import RoundChoice, beliefs_to_pb, constraints_from_pb, constraints_to_pb
from philip.feedback_weights import weights_from_pb, weights_to_pb
from philip.generation.codec import params_from_pb, params_to_pb
from philip.generation.requests import Style
from philip.v1 import common_pb2, gateway_pb2, generator_pb2, refiner_pb2
from services.gateway.references import decode_references
from services.gateway.session_events import (
    Compute,
    Finalized,
    NoiseTrace,
    Phase,
    Picture,
    RoundImages,
    RoundPreview,
    RoundProgress,
    RoundStarted,
    SessionCancelled,
    SessionEvent,
    SessionFailed,
    SessionImage,
    SessionView,
    UpscaleProgress,
)
from services.gateway.session_index import SessionSummary
from services.gateway.session_store import params_of

_PHASES = {
    Phase.GENERATING: gateway_pb2.SESSION_PHASE_GENERATING,
    Phase.AWAITING_FEEDBACK: gateway_pb2.SESSION_PHASE_AWAITING_FEEDBACK,
    Phase.FINALIZING: gateway_pb2.SESSION_PHASE_FINALIZING,
    Phase.DONE: gateway_pb2.SESSION_PHASE_DONE,
    Phase.CANCELLED: gateway_pb2.SESSION_PHASE_CANCELLED,
}
_DROPPABLE = frozenset({"preview", "progress", "upscale_progress"})


def trace_to_pb(trace: NoiseTrace) -> refiner_pb2.NoiseOrigin:
    return refiner_pb2.NoiseOrigin(seed=trace.seed, steps=[refiner_pb2.SteerStep(seed=s, diversity=d)
                                                          for s, d in trace.steps])


def trace_from_pb(pb: refiner_pb2.NoiseOrigin) -> NoiseTrace:
    return NoiseTrace(pb.seed, tuple((s.seed, float(s.diversity)) for s in pb.steps))


def picture_to_pb(picture: Picture, image_id: str = "", seed: int = 0, index: int = 0) -> common_pb2.Image:
    return common_pb2.Image(id=image_id, png=picture.png, width=picture.width, height=picture.height, seed=seed,
                            index=index)


def image_to_pb(image: SessionImage) -> refiner_pb2.RoundImage:
    return refiner_pb2.RoundImage(
        image=picture_to_pb(image.picture, image.image_id, image.seed, image.index),
        origin=trace_to_pb(image.origin), steered_from=image.steered_from, prompt=image.prompt,
    )


def image_from_pb(pb: refiner_pb2.RoundImage) -> SessionImage:
    img = pb.image
    return SessionImage(img.id, 0, img.index, img.seed, Picture(img.png, img.width, img.height),
                        trace_from_pb(pb.origin), pb.steered_from, pb.prompt)


def history_to_pb(choice: RoundChoice) -> refiner_pb2.RoundChoice:
    return refiner_pb2.RoundChoice(prompts=choice.prompts, liked=-1 if choice.liked is None else choice.liked,
                                   disliked=-1 if choice.disliked is None else choice.disliked)


def compute_to_pb(compute: Compute) -> refiner_pb2.RoundCompute:
    return refiner_pb2.RoundCompute(steps=compute.steps, main_image_evals=compute.main_image_evals,
                                    reference_image_evals=compute.reference_image_evals)


def round_images_to_pb(event: RoundImages) -> gateway_pb2.RoundImages:
    return gateway_pb2.RoundImages(round=event.round, images=[image_to_pb(i) for i in event.images],
                                   compute=compute_to_pb(event.compute), learned=beliefs_to_pb(event.learned))


def final_to_pb(final: Finalized) -> gateway_pb2.SessionFinal:
    return gateway_pb2.SessionFinal(image=picture_to_pb(final.picture, final.image_id),
                                    source_image_id=final.source_image_id)


def event_to_pb(session_id: str, event: SessionEvent) -> gateway_pb2.SessionEvent:
    pb = gateway_pb2.SessionEvent(session_id=session_id)
    match event:
        case RoundStarted(round=r, prompt=prompt, num_images=n, liked=liked, disliked=disliked):
            pb.round = r
            pb.round_started.CopyFrom(gateway_pb2.RoundStarted(round=r, prompt=prompt, num_images=n, liked=liked,
                                                               disliked=disliked))
        case RoundProgress(round=r, step=step, total_steps=total):
            pb.round = r
            pb.progress.CopyFrom(generator_pb2.Progress(step=step, total_steps=total))
        case RoundPreview(round=r, step=step, pictures=pictures):
            pb.round = r
            pb.preview.CopyFrom(generator_pb2.Preview(
                step=step, images=[picture_to_pb(p, index=i) for i, p in enumerate(pictures)]))
        case RoundImages():
            pb.round = event.round
            pb.round_images.CopyFrom(round_images_to_pb(event))
        case UpscaleProgress(done=done, total=total):
            pb.upscale_progress.CopyFrom(refiner_pb2.UpscaleProgress(done=done, total=total))
        case Finalized():
            pb.final.CopyFrom(final_to_pb(event))
        case SessionFailed(round=r, code=code, message=message):
            pb.round = r
            pb.error.CopyFrom(common_pb2.StreamError(code=code, message=message))
        case SessionCancelled(reason=reason):
            pb.cancelled.CopyFrom(generator_pb2.Cancelled(reason=reason))
    return pb


def encode_event(session_id: str, event: SessionEvent) -> bytes:
    """What the session's store stream holds for ``event``: a serialized SessionEvent."""
    return event_to_pb(session_id, event).SerializeToString()


def snapshot_to_pb(view: SessionView) -> gateway_pb2.SessionSnapshot:
    return gateway_pb2.SessionSnapshot(
        session_id=view.session_id,
        phase=_PHASES[view.phase],
        params=params_to_pb(params_of(view)),
        rounds=[round_images_to_pb(r) for r in view.rounds],
        liked_image_ids=list(view.liked),
        disliked_image_ids=list(view.disliked),
        chosen_image_id=view.chosen,
        final=final_to_pb(view.final) if view.final is not None else None,
        running_round=view.running_round,
        last_event_id=view.event_id,
        weights=weights_to_pb(view.weights),
        learned=beliefs_to_pb(view.learned),
        constraints=constraints_to_pb(view.constraints),
    )


async def feedback_from_pb(fb: gateway_pb2.SessionFeedback) -> dict[str, Any]:
    """SessionManager.feedback's arguments from a SessionFeedback (both edges; uploads decoded off the loop)."""
    return {"liked": list(fb.liked_image_ids), "disliked": list(fb.disliked_image_ids),
            "prompt": fb.prompt if fb.HasField("prompt") else None,
            "constraints": constraints_from_pb(fb.constraints) if fb.HasField("constraints") else None,
            "references": await decode_references(list(fb.reference_images))}


async def start_from_pb(start: gateway_pb2.SessionStart) -> dict[str, Any]:
    """SessionManager.start's arguments from a SessionStart (both edges)."""
    return {"params": params_from_pb(start.params), "weights": weights_from_pb(start.weights),
            "references": await decode_references(list(start.reference_images))}


def summary_to_pb(summary: SessionSummary) -> gateway_pb2.SessionSummary:
    return gateway_pb2.SessionSummary(
        session_id=summary.session_id, phase=_PHASES[summary.phase], prompt=summary.prompt,
        created_ms=summary.created_ms, rounds=summary.rounds, cover_image_id=summary.cover_image_id,
        final_image_id=summary.final_image_id)


def styles_to_pb(styles: Mapping[str, Style]) -> gateway_pb2.ListStylesResponse:
    return gateway_pb2.ListStylesResponse(styles=[
        gateway_pb2.Style(name=name, prefix=s.prefix, suffix=s.suffix, negative=s.negative)
        for name, s in sorted(styles.items())])


def session_droppable(payload: bytes) -> bool:
    """Previews and progress ticks may be dropped for a slow subscriber; nothing else may."""
    return gateway_pb2.SessionEvent.FromString(payload).WhichOneof("event") in _DROPPABLE


def job_droppable(payload: bytes) -> bool:
    return generator_pb2.GenerateEvent.FromString(payload).WhichOneof("event") in _DROPPABLE


def activity_to_pb(entry: Activity) -> gateway_pb2.ActivityEntry:
    return gateway_pb2.ActivityEntry(id=entry.id, at_ms=entry.at_ms, kind=entry.kind, subject_id=entry.subject_id,
                                     details=entry.details)
