"""The FABRIC feedback-weight schedule: plain data, importable without torch (the gateway validates with it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FeedbackWeights:
    """The FABRIC weight schedule; defaults are the paper's evaluation settings.

    Inside ``[start, end]`` of the schedule (fraction of steps done) liked references get
    ``max_weight``, elsewhere ``min_weight``; disliked ones get that times ``neg_scale``.
    """

    start: float = 0.0
    end: float = 1.0
    min_weight: float = 0.1
    max_weight: float = 0.8
    neg_scale: float = 0.5

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must be <= end ({self.end}), both in [0, 1]")
        for name in ("min_weight", "max_weight", "neg_scale"):
            _check_range(name, getattr(self, name), 0.0, math.inf)

    def weight_at(self, progress: float) -> tuple[float, float]:
        """(liked weight, disliked weight) at ``progress`` in [0, 1] of the schedule."""
        _check_range("progress", progress, 0.0, 1.0)
        w = self.max_weight if self.start <= progress <= self.end else self.min_weight
        return w, w * self.neg_scale


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # `not low <= v <= high` also rejects NaN.
    if not (low <= value <= high) or value == math.inf:
        upper = "inf)" if high == math.inf else f"{high}]"
        raise ValueError(f"{name} must be in [{low}, {upper}, got {value}")
