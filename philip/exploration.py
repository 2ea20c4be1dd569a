"""Prompt exploration's shared vocabulary: what a session's loop learned, and the person's pins and bans.

Plain data with their protobuf codecs, used by the refiner (which computes beliefs and honours
constraints) and by the gateway (which stores them with the session and validates a person's
constraints against the served vocabulary before a round can fail on them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from philip.feedback_weights import weights_from_pb, weights_to_pb
from philip.rpc.errors import InvalidArgument
from philip.v1 import refiner_pb2

MAX_PINNED = 16
MAX_BANNED = 64
TOP_VALUES = 3  # values per slot a belief reports
Slots = tuple[tuple[str, tuple[str, ...]], ...]  # (slot name, its values), in the vocabulary's order


@dataclass(frozen=True)
class RoundChoice:
    """An earlier round of a session, what prompt exploration learns from: the prompt each image was drawn
    from, and the indices liked / disliked (or None)."""

    prompts: tuple[str, ...]
    liked: int | None = None
    disliked: int | None = None


@dataclass(frozen=True)
class SlotBelief:
    """The most probable values of one slot with their posterior probabilities, most probable first."""

    slot: str
    values: tuple[tuple[str, float], ...]

    def describe(self) -> str:
        """``"bg: blue 0.71, red 0.12"``."""
        return f"{self.slot}: " + ", ".join(f"{v} {p:.2f}" for v, p in self.values)


@dataclass(frozen=True)
class SlotConstraints:
    """Pinned values (a slot always takes it) and banned values (never asked for)."""

    pinned: tuple[tuple[str, str], ...] = ()
    banned: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pinned or self.banned)

    def check(self, slots: Slots) -> None:
        """INVALID_ARGUMENT unless every slot and value is the vocabulary's, a slot has one pin at most and
        keeps at least one value."""
        if len(self.pinned) > MAX_PINNED or len(self.banned) > MAX_BANNED:
            raise InvalidArgument(f"constraints take 0-{MAX_PINNED} pins and 0-{MAX_BANNED} bans",
                                  field="constraints")
        if not slots and self:
            raise InvalidArgument("the served model has no exploration vocabulary: nothing to pin or ban",
                                  field="constraints")
        values = dict(slots)
        for name, pairs in (("pinned", self.pinned), ("banned", self.banned)):
            for slot, value in pairs:
                if slot not in values:
                    raise InvalidArgument(f"constraints.{name}: unknown slot {slot!r}; slots: {', '.join(values)}",
                                          field=f"constraints.{name}")
                if value not in values[slot]:
                    raise InvalidArgument(f"constraints.{name}: {value!r} is not a value of {slot!r} "
                                          f"({', '.join(values[slot])})", field=f"constraints.{name}")
        pinned_slots = [slot for slot, _ in self.pinned]
        if len(set(pinned_slots)) != len(pinned_slots):
            raise InvalidArgument("constraints.pinned: one pin per slot", field="constraints.pinned")
        for slot, slot_values in values.items():
            left = self.allowed(slot, slot_values)
            if not left:
                raise InvalidArgument(f"constraints leave slot {slot!r} no value (a pin that is also banned, or "
                                      "every value banned)", field="constraints.banned")

    def allowed(self, slot: str, values: Sequence[str]) -> list[str]:
        """The values of ``slot`` these constraints leave, in vocabulary order."""
        pins = [v for s, v in self.pinned if s == slot]
        banned = {v for s, v in self.banned if s == slot}
        return [v for v in (pins or values) if v not in banned]

    def to_json(self) -> dict[str, list[list[str]]]:
        return {"pinned": [list(p) for p in self.pinned], "banned": [list(b) for b in self.banned]}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[Sequence[str]]] | None) -> SlotConstraints:
        data = data or {}
        return cls(tuple((str(s), str(v)) for s, v in data.get("pinned", ())),
                   tuple((str(s), str(v)) for s, v in data.get("banned", ())))


@dataclass(frozen=True)
class SessionDefaults:
    """What a session gets when it names no weights, and the vocabulary exploration asks from."""

    weights: dict[str, float]
    weights_source: str = ""
    slots: Slots = field(default=())
    vocabulary_source: str = ""
    reference_weights: dict[str, float] = field(default_factory=dict)  # over ``weights`` when references are given

    def for_session(self, client: dict[str, float], has_references: bool) -> dict[str, float]:
        """The effective weights: the client's fields, the rest these defaults (with the reference overlay)."""
        return self.weights | (self.reference_weights if has_references else {}) | client


# ---- protobuf codecs (both services' edges use them) ------------------------------------------------


def constraints_to_pb(constraints: SlotConstraints) -> refiner_pb2.SlotConstraints:
    return refiner_pb2.SlotConstraints(
        pinned=[refiner_pb2.SlotValue(slot=s, value=v) for s, v in constraints.pinned],
        banned=[refiner_pb2.SlotValue(slot=s, value=v) for s, v in constraints.banned])


def constraints_from_pb(pb: refiner_pb2.SlotConstraints) -> SlotConstraints:
    """Shape only (counts); the vocabulary check is :meth:`SlotConstraints.check`."""
    constraints = SlotConstraints(tuple((p.slot, p.value) for p in pb.pinned),
                                  tuple((b.slot, b.value) for b in pb.banned))
    if len(constraints.pinned) > MAX_PINNED or len(constraints.banned) > MAX_BANNED:
        raise InvalidArgument(f"constraints take 0-{MAX_PINNED} pins and 0-{MAX_BANNED} bans", field="constraints")
    return constraints


def beliefs_to_pb(beliefs: Sequence[SlotBelief]) -> list[refiner_pb2.SlotBelief]:
    return [refiner_pb2.SlotBelief(slot=b.slot, values=[refiner_pb2.ValueProbability(value=v, probability=p)
                                                        for v, p in b.values]) for b in beliefs]


def beliefs_from_pb(pbs: Sequence[refiner_pb2.SlotBelief]) -> tuple[SlotBelief, ...]:
    return tuple(SlotBelief(b.slot, tuple((v.value, float(v.probability)) for v in b.values)) for b in pbs)


def beliefs_to_json(beliefs: Sequence[SlotBelief]) -> list[dict[str, object]]:
    return [{"slot": b.slot, "values": [[v, p] for v, p in b.values]} for b in beliefs]


def beliefs_from_json(data: Sequence[Mapping[str, object]] | None) -> tuple[SlotBelief, ...]:
    out = []
    for b in data or ():
        values = b["values"]
        assert isinstance(values, list)
        out.append(SlotBelief(str(b["slot"]), tuple((str(v), float(p)) for v, p in values)))
    return tuple(out)


def defaults_from_pb(pb: refiner_pb2.RefinerDefaults) -> SessionDefaults:
    return SessionDefaults(weights_from_pb(pb.weights), pb.weights_source,
                           tuple((s.name, tuple(s.values)) for s in pb.slots), pb.vocabulary_source,
                           weights_from_pb(pb.reference_weights))


def defaults_to_pb(defaults: SessionDefaults) -> refiner_pb2.RefinerDefaults:
    return refiner_pb2.RefinerDefaults(
        weights=weights_to_pb(defaults.weights), weights_source=defaults.weights_source,
        slots=[refiner_pb2.VocabularySlot(name=n, values=list(v)) for n, v in defaults.slots],
        vocabulary_source=defaults.vocabulary_source, reference_weights=weights_to_pb(defaults.reference_weights))
