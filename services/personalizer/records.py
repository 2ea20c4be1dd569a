"""What the personalizer keeps in the store: training jobs, adapters, token reservations, job events.

Store layout (prefix ``philip:``):
* record ``training:{job_id}``: a ``TrainingJob`` (state, step, attempts, worker, cancel flag);
* record ``adapter:{adapter_id}``: an ``Adapter``'s metadata (files under ``{adapters_dir}/{adapter_id}/``);
* record ``adapter_token:{token}``: who holds a token (a queued/running job, then its adapter);
* stream ``training:{job_id}``: the job's events (JSON), replayed by WatchJob;
* queue ``train`` (group ``personalizers``): job ids waiting for a worker.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from philip.clock import now_ms

QUEUE = "train"
GROUP = "personalizers"
JOB_KIND = "training"
ADAPTER_KIND = "adapter"
TOKEN_KIND = "adapter_token"

class TrainingState(StrEnum):
    """A training job's state (stored as its value)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = TrainingState
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


def job_stream(job_id: str) -> str:
    return f"training:{job_id}"


def new_job_id() -> str:
    return "tj_" + secrets.token_hex(8)


def new_adapter_id() -> str:
    return "ad_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class TrainingJob:
    job_id: str
    token: str
    class_word: str
    method: str
    steps: int
    rank: int
    state: TrainingState = TrainingState.QUEUED
    step: int = 0
    adapter_id: str = ""
    error: str = ""
    created_ms: int = field(default_factory=now_ms)
    attempts: int = 0
    worker: str = ""
    cancel_requested: bool = False
    tenant: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> TrainingJob:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "state" in fields:
            fields["state"] = TrainingState(fields["state"])
        return cls(**fields)

    def with_(self, **changes: Any) -> TrainingJob:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Adapter:
    adapter_id: str
    token: str
    class_word: str
    method: str
    job_id: str
    steps: int
    created_ms: int = field(default_factory=now_ms)
    tenant: str = ""

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Adapter:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ---- job events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobChanged:
    job: TrainingJob


@dataclass(frozen=True, slots=True)
class StepDone:
    step: int
    total: int
    loss: float
    resumed_from: int = 0


@dataclass(frozen=True, slots=True)
class SamplePreview:
    step: int
    png: bytes
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class AdapterReady:
    adapter: Adapter


TrainingEvent = JobChanged | StepDone | SamplePreview | AdapterReady


def encode_event(event: TrainingEvent) -> bytes:
    if isinstance(event, JobChanged):
        body: dict[str, Any] = {"type": "job", "job": event.job.to_record()}
    elif isinstance(event, StepDone):
        body = {"type": "step", **asdict(event)}
    elif isinstance(event, SamplePreview):
        body = {"type": "preview", "step": event.step, "png": base64.b64encode(event.png).decode(),
                "width": event.width, "height": event.height}
    else:
        body = {"type": "adapter", "adapter": event.adapter.to_record()}
    return json.dumps(body).encode()


def decode_event(payload: bytes) -> TrainingEvent:
    body = json.loads(payload)
    kind = body.pop("type")
    if kind == "job":
        return JobChanged(TrainingJob.from_record(body["job"]))
    if kind == "step":
        return StepDone(**body)
    if kind == "preview":
        return SamplePreview(body["step"], base64.b64decode(body["png"]), body["width"], body["height"])
    if kind == "adapter":
        return AdapterReady(Adapter.from_record(body["adapter"]))
    raise ValueError(f"unknown training event type {kind!r}")
