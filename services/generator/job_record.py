"""The generation job record (store kind ``job``) as a typed value; the recorder updates it field by field."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from philip.generation.requests import GenerationRequest


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A result image's metadata (its PNG is the blob of the same id)."""

    id: str
    width: int
    height: int
    seed: int
    index: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    state: JobState
    request: GenerationRequest
    step: int = 0
    images: tuple[StoredImage, ...] = ()
    error: str = ""
    created_ms: int = 0
    finished_ms: int = 0
    tenant: str = ""

    def to_record(self) -> dict[str, Any]:
        return {"state": self.state.value, "params": dataclasses.asdict(self.request), "step": self.step,
                "total_steps": self.request.steps, "images": [dataclasses.asdict(i) for i in self.images],
                "error": self.error, "created_ms": self.created_ms, "finished_ms": self.finished_ms,
                "tenant": self.tenant}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> JobRecord:
        params = data["params"]
        request = GenerationRequest(**{**params, "adapter_ids": tuple(params["adapter_ids"])})
        return cls(JobState(data["state"]), request,
                   int(data["step"]), tuple(StoredImage(**meta) for meta in data["images"]), data["error"],
                   int(data["created_ms"]), int(data["finished_ms"]), data.get("tenant", ""))


__all__ = ["JobRecord", "JobState", "StoredImage"]
