"""The session record (store kind ``session``) as a typed value: what a session is between its events.

Reads go through :meth:`SessionRecord.from_record`; writes are field dicts merged by compare-and-sets
(``Store.update_record_if``), so ``stored`` keeps the JSON as read, which expectations compare against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from philip.exploration import SlotBelief, SlotConstraints, beliefs_from_json, beliefs_to_json
from services.gateway.session_events import Compute, Phase


@dataclass(frozen=True, slots=True)
class RoundEntry:
    """A finished round: its images, what it cost and what exploration believed after it."""

    round: int
    image_ids: tuple[str, ...]
    compute: Compute
    learned: tuple[SlotBelief, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "image_ids": list(self.image_ids),
                "compute": {"steps": self.compute.steps, "main_image_evals": self.compute.main_image_evals,
                            "reference_image_evals": self.compute.reference_image_evals},
                "learned": beliefs_to_json(self.learned)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundEntry:
        return cls(int(data["round"]), tuple(data["image_ids"]), Compute(**data["compute"]),
                   beliefs_from_json(data.get("learned")))


@dataclass(frozen=True, slots=True)
class Choice:
    """What the feedback after round ``round`` liked and disliked (prompt exploration learns from it)."""

    round: int
    liked: tuple[str, ...] = ()
    disliked: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "liked": list(self.liked), "disliked": list(self.disliked)}


@dataclass(frozen=True, slots=True)
class FinalImage:
    image_id: str
    width: int
    height: int
    source_image_id: str

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "width": self.width, "height": self.height,
                "source_image_id": self.source_image_id}


@dataclass(frozen=True, slots=True)
class SessionRecord:
    phase: Phase
    params: dict[str, Any]
    base_seed: int
    weights: dict[str, float]  # effective: the client's merged over the model's defaults
    client_weights: dict[str, float] = field(default_factory=dict)  # as the client sent them
    references: tuple[str, ...] = ()  # uploaded reference image ids
    rounds: tuple[RoundEntry, ...] = ()
    liked: tuple[str, ...] = ()
    disliked: tuple[str, ...] = ()
    choices: tuple[Choice, ...] = ()
    constraints: SlotConstraints = field(default_factory=SlotConstraints)
    chosen: str = ""
    final: FinalImage | None = None
    running_round: int = 0
    event_id: str = "0-0"
    created_ms: int = 0
    heartbeat_ms: int | None = None
    tenant: str = ""
    stored: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the JSON as read

    @property
    def image_ids(self) -> list[str]:
        """Every image of the session: its rounds' and its uploaded references."""
        return [i for entry in self.rounds for i in entry.image_ids] + list(self.references)

    def to_record(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value, "params": self.params, "base_seed": self.base_seed, "weights": self.weights,
            "client_weights": self.client_weights, "references": list(self.references),
            "rounds": [r.to_json() for r in self.rounds], "liked": list(self.liked), "disliked": list(self.disliked),
            "choices": [c.to_json() for c in self.choices], "constraints": self.constraints.to_json(),
            "chosen": self.chosen, "final": self.final.to_json() if self.final else None,
            "running_round": self.running_round, "event_id": self.event_id, "created_ms": self.created_ms,
            "heartbeat_ms": self.heartbeat_ms, "tenant": self.tenant,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> SessionRecord:
        final = data.get("final")
        return cls(
            phase=Phase(data["phase"]), params=dict(data["params"]), base_seed=int(data["base_seed"]),
            weights=dict(data["weights"]), client_weights=dict(data.get("client_weights", data["weights"])),
            references=tuple(data.get("references", ())),
            rounds=tuple(RoundEntry.from_json(r) for r in data.get("rounds", ())),
            liked=tuple(data.get("liked", ())), disliked=tuple(data.get("disliked", ())),
            choices=tuple(Choice(int(c["round"]), tuple(c["liked"]), tuple(c["disliked"]))
                          for c in data.get("choices", ())),
            constraints=SlotConstraints.from_json(data.get("constraints")), chosen=data.get("chosen", ""),
            final=FinalImage(**final) if final else None, running_round=int(data.get("running_round", 0)),
            event_id=data.get("event_id", "0-0"), created_ms=int(data.get("created_ms", 0)),
            heartbeat_ms=data.get("heartbeat_ms"), tenant=data.get("tenant", ""), stored=data,
        )


__all__ = ["Choice", "FinalImage", "RoundEntry", "SessionRecord"]
