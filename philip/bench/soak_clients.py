"""The soak's clients: scripted sessions and training jobs over the gateways' HTTP edges, written as a
careful client is: a gateway that is down or answers 503/429 is retried (the next replica first), a
POST that creates something carries an Idempotency-Key (a 409 with Retry-After says its first try
is still running, perhaps on a replica that was killed: wait and send it again), and a session resumes from its snapshot
(a round or upscale failed by a fault is simply sent again)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from philip.evals.personalize import reference_images
from philip.images import png_bytes

RETRYABLE = frozenset({429, 502, 503, 504})
TERMINAL_JOB = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})
FABRIC = {"explore": 0.0, "maxWeight": 0.8, "minWeight": 0.1}  # round 2 a FABRIC round on the refiner


class Edges:
    """The gateway replicas' HTTP edges; each call goes to the next replica until one answers."""

    def __init__(self, bases: list[str], give_up_s: float = 180.0) -> None:
        self.clients = [httpx.AsyncClient(base_url=b, timeout=30) for b in bases]
        self.give_up_s = give_up_s
        self.internal_errors = 0  # 500 answers: bugs, whatever the fault
        self.internal_answers: list[str] = []
        self.retries = 0
        self.key_waits = 0  # retries of a 409 "this Idempotency-Key is still running" (its first try's replica died)

    async def call(self, method: str, path: str, first: int = 0, **kwargs: Any) -> httpx.Response:
        """The first answer that is neither a transport error nor retryable; raises TimeoutError past give_up_s."""
        deadline, attempt = time.monotonic() + self.give_up_s, 0
        while True:
            client = self.clients[(first + attempt) % len(self.clients)]
            try:
                response = await client.request(method, path, **kwargs)
                if response.status_code == 500:
                    self.internal_errors += 1
                    self.internal_answers.append(f"{method} {path}: {response.text[:300]}")
                elif _still_running(response):
                    self.key_waits += 1
                elif response.status_code not in RETRYABLE:
                    return response
            except httpx.TransportError:
                pass
            attempt += 1
            self.retries += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no replica answered for {self.give_up_s:.0f} s")
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.5))

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


def _still_running(response: httpx.Response) -> bool:
    """409 with Retry-After: an Idempotency-Key's first request has not ended (a plain 409 is final)."""
    return response.status_code == 409 and "retry-after" in response.headers


@dataclass
class SessionRun:
    completed: bool = False
    error: str = ""
    round_s: list[float] = field(default_factory=list)
    resent: int = 0  # rounds or finalizes sent again after a fault failed them


async def scripted_session(edges: Edges, k: int, run_id: str, steps: int, give_up_s: float = 600.0) -> SessionRun:
    """Start, like the first image of round 1, finalize the first of round 2; resume through any fault."""
    run, first = SessionRun(), k % len(edges.clients)
    body = {"params": {"prompt": "a red circle on a blue background", "numImages": 2, "steps": steps,
                       "seed": 100 + k}, "weights": FABRIC}
    started = await edges.call("POST", "/v1/sessions", first, json=body,
                               headers={"Idempotency-Key": f"soak-{run_id}-{k}"})
    if started.status_code != 201:
        run.error = f"start: {started.status_code} {started.text[:200]}"
        return run
    session_id, asked, last = started.json()["sessionId"], time.monotonic(), ""
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        reply = await edges.call("GET", f"/v1/sessions/{session_id}", first)
        if reply.status_code != 200:
            run.error = f"snapshot: {reply.status_code} {reply.text[:200]}"
            return run
        snap = reply.json()
        rounds, phase = snap.get("rounds", []), snap["phase"]
        if len(rounds) > len(run.round_s):
            run.round_s.append(time.monotonic() - asked)
        if phase == "SESSION_PHASE_DONE":
            run.completed = True
            return run
        if phase == "SESSION_PHASE_CANCELLED":
            run.error = "cancelled"
            return run
        if phase != "SESSION_PHASE_AWAITING_FEEDBACK":
            await asyncio.sleep(random.uniform(0.3, 0.6))
            continue
        path, command = _next_command(session_id, rounds)
        run.resent += last == f"{path} after {len(rounds)}"  # the same again: a fault failed the last one
        asked, last = time.monotonic(), f"{path} after {len(rounds)}"
        answer = await edges.call("POST", path, first, json=command)
        if answer.status_code not in (200, 202, 409):  # 409: the state moved meanwhile; look again
            run.error = f"{path}: {answer.status_code} {answer.text[:200]}"
            return run
    run.error = f"not done after {give_up_s:.0f} s"
    return run


def _next_command(session_id: str, rounds: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    if len(rounds) < 2:  # round 1 again (nothing to like yet), or round 2 liking round 1's first image
        liked = [rounds[0]["images"][0]["image"]["id"]] if rounds else []
        return f"/v1/sessions/{session_id}/feedback", {"likedImageIds": liked}
    return f"/v1/sessions/{session_id}/finalize", {"imageId": rounds[-1]["images"][0]["image"]["id"]}


@dataclass
class TrainingRun:
    job_id: str = ""
    state: str = ""
    adapter_id: str = ""
    attempts: int = 0
    error: str = ""


async def training_job(edges: Edges, k: int, run_id: str, steps: int, give_up_s: float = 900.0) -> TrainingRun:
    """One LoRA job from five reference renders, followed to its end."""
    run = TrainingRun()
    token = "zq" + "".join(chr(ord("a") + (ord(c) + k) % 26) for c in run_id[:6]) + chr(ord("a") + k)
    photos = [("photos", (f"ref{i}.png", png_bytes(img), "image/png"))  # bytes: a retry sends them again
              for i, img in enumerate(reference_images(5))]
    created = await edges.call("POST", "/v1/adapters", k, files=photos,
                               # A fixed boundary, so that a retry's body is the same bytes as the first try's.
                               headers={"Idempotency-Key": f"soak-{run_id}-t{k}",
                                        "Content-Type": f"multipart/form-data; boundary=soak{run_id}{k}"},
                               data={"token": token, "class_word": "shape", "method": "LORA", "steps": str(steps)})
    if created.status_code != 202:
        run.error = f"create: {created.status_code} {created.text[:200]}"
        return run
    run.job_id = created.json()["jobId"]
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        job = (await edges.call("GET", f"/v1/training-jobs/{run.job_id}", k)).json()
        run.state, run.adapter_id, run.attempts = job.get("state", ""), job.get("adapterId", ""), job.get("attempts", 0)
        if run.state in TERMINAL_JOB:
            return run
        await asyncio.sleep(1.0)
    run.error = f"not done after {give_up_s:.0f} s"
    return run
