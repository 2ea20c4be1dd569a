"""The FABRIC feedback-weight schedule: plain data, importable without torch (the gateway validates with it).

On the wire (``philip.v1.FeedbackWeights``) every field is optional; both services keep the
fields a client set as a plain dict and check it with :func:`parse_weights`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from philip.rpc.errors import InvalidArgument
from philip.v1 import refiner_pb2

WEIGHT_FIELDS = ("start", "end", "min_weight", "max_weight", "neg_scale", "diversity", "explore")
DEFAULT_DIVERSITY = 0.5
NOT_SCHEDULE = ("diversity", "explore")  # the fields that steer noise and prompts, not FABRIC's weights


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


def parse_weights(weights: dict[str, float]) -> tuple[FeedbackWeights, float, float]:
    """The schedule, the seed-steering diversity and the share of images that explore prompts, from the
    fields a client set; INVALID_ARGUMENT if bad."""
    unknown = set(weights) - set(WEIGHT_FIELDS)
    if unknown:
        raise InvalidArgument(f"weights has unknown fields {sorted(unknown)}; known: {', '.join(WEIGHT_FIELDS)}",
                              field="weights")
    try:
        schedule = FeedbackWeights(**{k: v for k, v in weights.items() if k not in NOT_SCHEDULE})
    except ValueError as exc:
        raise InvalidArgument(f"weights: {exc}", field="weights") from None
    diversity = weights.get("diversity", DEFAULT_DIVERSITY)
    explore = weights.get("explore", 0.0)
    for name, value in (("diversity", diversity), ("explore", explore)):
        if not 0.0 <= value <= 1.0:
            raise InvalidArgument(f"weights.{name} must be in [0, 1], got {value}", field=f"weights.{name}")
    return schedule, diversity, explore


def weights_from_pb(pb: refiner_pb2.FeedbackWeights) -> dict[str, float]:
    """Only the fields the client set; the rest take the defaults."""
    return {name: float(getattr(pb, name)) for name in WEIGHT_FIELDS if pb.HasField(name)}  # type: ignore[arg-type]


def weights_to_pb(weights: dict[str, float]) -> refiner_pb2.FeedbackWeights:
    return refiner_pb2.FeedbackWeights(**{k: v for k, v in weights.items() if k in WEIGHT_FIELDS})


def builtin_weights() -> dict[str, float]:
    """Every field at its built-in value: FABRIC's paper schedule, diversity 0.5, no exploration."""
    schedule = {f.name: float(getattr(FeedbackWeights(), f.name)) for f in dataclasses.fields(FeedbackWeights)}
    return schedule | {"diversity": DEFAULT_DIVERSITY, "explore": 0.0}


def complete(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` over the built-in values, checked (ValueError naming the bad field)."""
    out = builtin_weights() | {k: float(v) for k, v in weights.items()}
    try:
        parse_weights(out)
    except Exception as exc:  # InvalidArgument: the message names the field
        raise ValueError(str(exc)) from None
    return out


def parse_weight_options(options: list[str]) -> dict[str, float]:
    """``["end=0.5", "min_weight=0"]`` -> ``{"end": 0.5, "min_weight": 0.0}``; the refiner checks the ranges."""
    weights: dict[str, float] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name.strip() not in WEIGHT_FIELDS:
            raise ValueError(f"{option!r} is not NAME=VALUE with NAME one of {', '.join(WEIGHT_FIELDS)}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{option!r}: {value!r} is not a number") from None
    return weights
