"""The gateway's clients of the generator and refiner: gRPC streams in, session domain events out.

Upstream failures come back as the domain error of the same status code (UNAVAILABLE when a
replica is gone, INVALID_ARGUMENT for parameters the upstream rejected), so a session reports
them exactly. Cancelling the consuming task cancels the upstream call, which stops the work
within one denoising step.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc
from grpc import aio

from philip.exploration import (
    RoundChoice,
    SessionDefaults,
    SlotConstraints,
    beliefs_from_pb,
    constraints_to_pb,
    defaults_from_pb,
)
from philip.feedback_weights import builtin_weights, weights_to_pb
from philip.generation.codec import params_to_pb
from philip.generation.requests import GenerationParams
from philip.rpc.errors import Cancelled, PhilipError, error_from_code
from philip.v1 import common_pb2, generator_pb2, generator_pb2_grpc, refiner_pb2, refiner_pb2_grpc
from services.gateway.codec import history_to_pb, image_from_pb, picture_to_pb, trace_to_pb
from services.gateway.model_info import ModelInfoCache
from services.gateway.session_events import (
    Compute,
    NoiseTrace,
    Picture,
    PreviewPictures,
    RoundEvent,
    RoundOutput,
    SessionImage,
    StepProgress,
    TileProgress,
    UpscaleEvent,
)
from services.gateway.upstream_rpc import from_rpc as _from_rpc
from services.gateway.upstream_rpc import metadata

DEFAULTS_TTL_S = 30.0


class GrpcUpstream:
    """Rounds on a generator (plain) or refiner (with feedback) replica; upscales on a refiner."""

    def __init__(self, generator: generator_pb2_grpc.GeneratorServiceStub,
                 refiner: refiner_pb2_grpc.RefinerServiceStub, *, timeout_s: float = 600.0,
                 model: ModelInfoCache | None = None) -> None:
        self.generator = generator
        self.refiner = refiner
        self.model = model or ModelInfoCache(generator)  # the model's default steps and guidance
        self.timeout_s = timeout_s
        self._defaults: tuple[float, SessionDefaults] | None = None

    async def plain_round(self, params: GenerationParams, round_id: str) -> AsyncGenerator[RoundEvent, None]:
        call = self.generator.Generate(timeout=self.timeout_s, metadata=metadata())
        try:
            await call.write(generator_pb2.GenerateClientMessage(
                start=generator_pb2.GenerateStart(params=params_to_pb(params))))
            await call.done_writing()
            async for event in call:
                kind = event.WhichOneof("event")
                if (step := _step_event(event)) is not None:
                    yield step
                elif kind == "result":
                    compute = _plain_compute(params, len(event.result.images), *await self.model.step_defaults())
                    yield RoundOutput(_plain_images(event.result.images), compute)
                    return
                elif kind == "error":
                    raise error_from_code(event.error.code, event.error.message)
                elif kind == "cancelled":
                    raise Cancelled(f"generation cancelled: {event.cancelled.reason}")
            raise PhilipError("the generator ended the round without a result")
        except aio.AioRpcError as exc:
            raise _from_rpc(exc, "generator") from None
        finally:
            call.cancel()  # no-op when finished; otherwise stops the generator within one step

    async def feedback_round(self, params: GenerationParams, round_id: str, liked: Sequence[SessionImage],
                             disliked: Sequence[SessionImage], weights: dict[str, float],
                             history: Sequence[RoundChoice] = (),
                             constraints: SlotConstraints = SlotConstraints()) -> AsyncGenerator[RoundEvent, None]:
        request = refiner_pb2.RefineRequest(
            params=params_to_pb(params), liked=[_feedback_image(i) for i in liked],
            disliked=[_feedback_image(i) for i in disliked], weights=weights_to_pb(weights), round_id=round_id,
            history=[history_to_pb(h) for h in history], constraints=constraints_to_pb(constraints),
        )
        call = self.refiner.Refine(request, timeout=self.timeout_s, metadata=metadata())
        try:
            async for event in call:
                if (step := _step_event(event)) is not None:
                    yield step
                elif event.WhichOneof("event") == "result":
                    c = event.result.compute
                    yield RoundOutput(tuple(image_from_pb(i) for i in event.result.images),
                                      Compute(c.steps, c.main_image_evals, c.reference_image_evals),
                                      beliefs_from_pb(event.result.learned))
                    return
            raise PhilipError("the refiner ended the round without a result")
        except aio.AioRpcError as exc:
            raise _from_rpc(exc, "refiner") from None
        finally:
            call.cancel()

    async def defaults(self) -> SessionDefaults:
        """The refiner's, cached for ``DEFAULTS_TTL_S`` (they change only when a refiner restarts with new files)."""
        now = time.monotonic()
        if self._defaults is None or now - self._defaults[0] > DEFAULTS_TTL_S:
            try:
                pb = await self.refiner.GetDefaults(refiner_pb2.GetDefaultsRequest(), timeout=10.0,
                                                    metadata=metadata())
            except aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise _from_rpc(exc, "refiner") from None
                # A refiner older than GetDefaults (a rolling upgrade): what it did then, FABRIC's paper weights.
                self._defaults = (now, SessionDefaults(builtin_weights(), "built-in (the refiner has no GetDefaults)"))
                return self._defaults[1]
            self._defaults = (now, defaults_from_pb(pb))
        return self._defaults[1]

    async def upscale(self, picture: Picture, scale: int) -> AsyncIterator[UpscaleEvent]:
        request = refiner_pb2.UpscaleRequest(image=picture_to_pb(picture), scale=scale)
        call = self.refiner.Upscale(request, timeout=self.timeout_s, metadata=metadata())
        try:
            async for event in call:
                if event.WhichOneof("event") == "progress":
                    yield TileProgress(event.progress.done, event.progress.total)
                else:
                    yield Picture(event.image.png, event.image.width, event.image.height)
                    return
            raise PhilipError("the refiner ended the upscale without an image")
        except aio.AioRpcError as exc:
            raise _from_rpc(exc, "refiner") from None
        finally:
            call.cancel()


def _step_event(event: generator_pb2.GenerateEvent | refiner_pb2.RefineEvent) -> RoundEvent | None:
    """A denoising step's progress or preview, as the generator and the refiner both send them."""
    kind = event.WhichOneof("event")
    if kind == "progress":
        return StepProgress(event.progress.step, event.progress.total_steps)
    if kind == "preview":
        return PreviewPictures(event.preview.step, tuple(Picture(i.png, i.width, i.height)
                                                          for i in event.preview.images))
    return None


def _plain_images(images: Sequence[common_pb2.Image]) -> tuple[SessionImage, ...]:
    """Generator images: each one's noise is the plain draw of its own seed."""
    return tuple(SessionImage(i.id, 0, i.index, i.seed, Picture(i.png, i.width, i.height), NoiseTrace(i.seed))
                 for i in images)


def _plain_compute(params: GenerationParams, num_images: int, default_steps: int, default_guidance: float) -> Compute:
    """A plain round's UNet work: every step, every image, doubled by classifier-free guidance; unset steps and
    guidance are the served model's (GetModelInfo), not SD-1.x's 8 and 5."""
    steps = params.steps or default_steps
    guidance = default_guidance if params.guidance is None else params.guidance
    return Compute(steps, steps * num_images * (2 if guidance > 1 else 1))


def _feedback_image(image: SessionImage) -> refiner_pb2.FeedbackImage:
    return refiner_pb2.FeedbackImage(image=picture_to_pb(image.picture, image.image_id, image.seed, image.index),
                                     origin=trace_to_pb(image.origin), reference=image.is_reference)


