"""Domain events of one generation job, in the order a client sees them.

Queued* -> Started -> (Progress | Preview)* -> exactly one terminal event (Result, Failed or
Cancelled). The codec turns them into GenerateEvent messages at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One PNG-encoded image; ``id`` is empty for previews and set once a result is stored."""

    png: bytes
    width: int
    height: int
    seed: int
    index: int
    id: str = ""


@dataclass(frozen=True, slots=True)
class Queued:
    position: int  # jobs ahead of this one


@dataclass(frozen=True, slots=True)
class Started:
    batch_size: int  # images in the merged batch, >= this job's own


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    total_steps: int


@dataclass(frozen=True, slots=True)
class Preview:
    step: int
    images: tuple[GeneratedImage, ...]


@dataclass(frozen=True, slots=True)
class Result:
    images: tuple[GeneratedImage, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    code: str  # grpc status code name, e.g. "INTERNAL"
    message: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    reason: str  # "client", "deadline" or "shutdown"


JobEvent = Queued | Started | Progress | Preview | Result | Failed | Cancelled
TERMINAL_EVENTS = (Result, Failed, Cancelled)


def is_terminal(event: JobEvent) -> bool:
    return isinstance(event, TERMINAL_EVENTS)
