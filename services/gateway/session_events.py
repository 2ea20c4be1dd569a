"""What a session is made of and what happens to it: plain data shared by the session domain,
the upstream clients and the wire codec (no protobuf, no torch)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from philip.exploration import RoundChoice, SessionDefaults, SlotBelief, SlotConstraints
from philip.generation.requests import GenerationParams


class Phase(StrEnum):
    GENERATING = "generating"
    AWAITING_FEEDBACK = "awaiting_feedback"
    FINALIZING = "finalizing"
    DONE = "done"
    CANCELLED = "cancelled"


TERMINAL_PHASES = frozenset({Phase.DONE, Phase.CANCELLED})


@dataclass(frozen=True, slots=True)
class NoiseTrace:
    """How an image's initial noise was drawn: a root seed plus (seed, diversity) steering steps."""

    seed: int
    steps: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"seed": self.seed, "steps": [list(s) for s in self.steps]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NoiseTrace:
        steps = data.get("steps") or []
        assert isinstance(steps, list)
        return cls(int(data["seed"]), tuple((int(s), float(d)) for s, d in steps))  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class Picture:
    """An encoded image: PNG bytes and its size."""

    png: bytes
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class SessionImage:
    """One image of a round; ``image_id`` is what Feedback and Finalize refer to."""

    image_id: str
    round: int
    index: int
    seed: int
    picture: Picture
    origin: NoiseTrace
    steered_from: str = ""
    prompt: str = ""  # what it was drawn from: the round's prompt or a caption prompt exploration asked for

    @property
    def is_reference(self) -> bool:
        """An uploaded reference (kept as round 0), not a drawn image: it has no noise of its own."""
        return self.round == 0


@dataclass(frozen=True, slots=True)
class Compute:
    """UNet work of a round in image evaluations (reference passes counted separately)."""

    steps: int
    main_image_evals: int
    reference_image_evals: int = 0

    @property
    def total(self) -> int:
        return self.main_image_evals + self.reference_image_evals


# ---- what an upstream round or upscale reports --------------------------------------------------

@dataclass(frozen=True, slots=True)
class StepProgress:
    step: int
    total_steps: int


@dataclass(frozen=True, slots=True)
class PreviewPictures:
    step: int
    pictures: tuple[Picture, ...]


@dataclass(frozen=True, slots=True)
class RoundOutput:
    """A finished round as an upstream returns it: images in batch order (ids already assigned)."""

    images: tuple[SessionImage, ...]
    compute: Compute
    learned: tuple[SlotBelief, ...] = ()  # what prompt exploration believed when it asked for these


@dataclass(frozen=True, slots=True)
class TileProgress:
    done: int
    total: int


RoundEvent = StepProgress | PreviewPictures | RoundOutput
UpscaleEvent = TileProgress | Picture


# ---- what a session publishes (its event stream) ------------------------------------------------

@dataclass(frozen=True, slots=True)
class RoundStarted:
    round: int
    prompt: str
    num_images: int
    liked: int
    disliked: int


@dataclass(frozen=True, slots=True)
class RoundProgress:
    round: int
    step: int
    total_steps: int


@dataclass(frozen=True, slots=True)
class RoundPreview:
    round: int
    step: int
    pictures: tuple[Picture, ...]


@dataclass(frozen=True, slots=True)
class RoundImages:
    round: int
    images: tuple[SessionImage, ...]
    compute: Compute
    learned: tuple[SlotBelief, ...] = ()


@dataclass(frozen=True, slots=True)
class UpscaleProgress:
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Finalized:
    image_id: str
    picture: Picture
    source_image_id: str


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """A round or upscale failed; the session is usable again (``round`` 0: the upscale)."""

    round: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionCancelled:
    reason: str


SessionEvent = (RoundStarted | RoundProgress | RoundPreview | RoundImages | UpscaleProgress | Finalized
                | SessionFailed | SessionCancelled)


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session's state as stored; ``event_id`` is the last stream entry it reflects."""

    session_id: str
    phase: Phase
    params: dict[str, object]
    rounds: tuple[RoundImages, ...]
    liked: tuple[str, ...]
    disliked: tuple[str, ...]
    chosen: str = ""
    final: Finalized | None = None
    running_round: int = 0
    event_id: str = "0-0"
    weights: dict[str, float] = field(default_factory=dict)  # effective: every field set
    learned: tuple[SlotBelief, ...] = ()  # the last exploring round's beliefs
    constraints: SlotConstraints = field(default_factory=SlotConstraints)


class Upstream(Protocol):
    """Where rounds and upscales run (the generator and refiner services)."""

    def plain_round(self, params: GenerationParams, round_id: str) -> AsyncGenerator[RoundEvent, None]: ...

    def feedback_round(self, params: GenerationParams, round_id: str, liked: Sequence[SessionImage],
                       disliked: Sequence[SessionImage], weights: dict[str, float],
                       history: Sequence[RoundChoice] = (),
                       constraints: SlotConstraints = SlotConstraints()) -> AsyncGenerator[RoundEvent, None]: ...

    async def defaults(self) -> SessionDefaults:
        """The served model's session defaults and exploration vocabulary (the refiner's)."""
        ...

    def upscale(self, picture: Picture, scale: int) -> AsyncIterator[UpscaleEvent]: ...
