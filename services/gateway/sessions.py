"""Human-in-the-loop sessions: rounds, feedback, finalize, cancel, resume (the gateway's domain).

A session lives in the store, never only in a connection: a record (kind ``session``) holds its
phase, parameters, rounds, likes and dislikes; every image has a record (kind ``simage``) and a
PNG blob under its id; every event goes to the stream ``session:{id}``, which Session streams
and Subscribe replay and follow. Rounds and upscales run as tasks of the manager, so a client
that disconnects loses nothing: it reattaches with the snapshot and the events after it.

State machine::

    start -> GENERATING -(round images | round failed)-> AWAITING_FEEDBACK
    AWAITING_FEEDBACK -feedback-> GENERATING            (one round at a time)
    AWAITING_FEEDBACK -finalize-> FINALIZING -(final)-> DONE   (-(failed)-> AWAITING_FEEDBACK)
    any non-terminal -cancel-> CANCELLED

Round 1, and any round while nothing has been liked or disliked, is a plain batch from the
generator; every other round goes to the refiner with all likes and dislikes so far (and, when the
session explores prompts, with every earlier round's prompts and the choice made after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from philip.activity import ActivityLog
from philip.clock import now_ms
from philip.exploration import SlotConstraints
from philip.feedback_weights import parse_weights
from philip.generation.requests import MAX_PROMPT_CHARS, MAX_SEED, GenerationParams
from philip.logs import get_logger
from philip.quotas import SESSIONS, Quotas
from philip.rpc.auth import current_tenant
from philip.rpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    PhilipError,
)
from philip.store import Store
from services.gateway.references import check_references
from services.gateway.session_events import (
    TERMINAL_PHASES,
    Phase,
    Picture,
    SessionCancelled,
    SessionFailed,
    SessionView,
    Upstream,
)
from services.gateway.session_index import SessionIndex
from services.gateway.session_record import Choice, SessionRecord
from services.gateway.session_store import (
    SESSION_KIND,
    Expect,
    SessionEncoder,
    Superseded,
    params_to_json,
)
from services.gateway.session_work import ROUND_SEED_STRIDE, SessionWork, cancel_and_wait, finalizing, running_round

log = get_logger("services.gateway.sessions")

MAX_FEEDBACK_IDS = 8  # per message and list


class SessionManager(SessionWork):
    """Runs sessions against an :class:`Upstream`, keeping everything in the store."""

    def __init__(self, store: Store, upstream: Upstream, *, encode_event: SessionEncoder, ttl_s: float,
                 max_rounds: int = 100, stale_after_s: float = 60.0, max_references: int = 4,
                 quotas: Quotas | None = None, activity: ActivityLog | None = None,
                 quota_idle_s: float = 900.0) -> None:
        super().__init__(store, encode_event, ttl_s)  # ttl_s: PHILIP_SESSION_IDLE_S, refreshed on every activity
        self.upstream = upstream
        self.quotas = quotas or Quotas(store, {})
        self.activity = activity or ActivityLog(store)
        self.quota_idle_s = quota_idle_s  # an open session holds its quota slot this long after its last command
        self.max_rounds = max_rounds
        self.stale_after_s = stale_after_s
        self.max_references = max_references  # likes (and dislikes) a round conditions on: the most recent
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.index = SessionIndex(store)  # the gallery's newest-first list of each tenant's sessions

    # ---- commands ---------------------------------------------------------------------------------

    async def start(self, params: GenerationParams, weights: dict[str, float],
                    references: Sequence[Picture] = ()) -> str:
        """Create a session and start round 1 (conditioned on uploaded ``references``); returns the session id."""
        if not params.prompt.strip() or len(params.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt is required (1-{MAX_PROMPT_CHARS} characters)", field="params.prompt")
        if params.num_images > 8:
            raise InvalidArgument(f"num_images must be 1-8 (0 = default 4), got {params.num_images}",
                                  field="params.num_images")
        parse_weights(weights)  # a bad one fails the start, not round 2
        check_references(references, 0)
        # Unset fields take the served model's best measured defaults; the record keeps the effective weights,
        # so a session's rounds do not change when a refiner restarts with other defaults.
        client_weights = dict(weights)
        weights = (await self.upstream.defaults()).for_session(client_weights, bool(references))
        parse_weights(weights)
        base = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED // 2)
        if not 0 <= base <= MAX_SEED - self.max_rounds * ROUND_SEED_STRIDE:
            raise InvalidArgument(f"seed must be in 0-{MAX_SEED - self.max_rounds * ROUND_SEED_STRIDE} "
                                  f"(later rounds draw from seed + (round - 1) * {ROUND_SEED_STRIDE})",
                                  field="params.seed")
        session_id = f"ses_{uuid.uuid4().hex}"
        await self.quotas.acquire(SESSIONS, session_id, self.quota_idle_s)
        refs = await self._save_references(session_id, references, 0)
        record = SessionRecord(
            phase=Phase.GENERATING, params=params_to_json(dataclasses.replace(params, seed=None)), base_seed=base,
            weights=dict(weights), client_weights=client_weights, references=tuple(refs), liked=tuple(refs),
            running_round=1, created_ms=now_ms(), heartbeat_ms=now_ms(), tenant=current_tenant(),
        )
        await self.store.put_record(SESSION_KIND, session_id, record.to_record(), ttl_s=self.ttl_s)
        await self.index.add(session_id)
        log.info("session.started", session_id=session_id, prompt_chars=len(params.prompt))
        await self.activity.record("session.started", session_id, prompt=params.prompt)
        self._spawn(session_id, self._round(session_id, 1), running_round(1))
        return session_id

    async def feedback(self, session_id: str, liked: Sequence[str], disliked: Sequence[str],
                       prompt: str | None = None, constraints: SlotConstraints | None = None,
                       references: Sequence[Picture] = ()) -> int:
        """Record likes/dislikes (and a prompt edit, exploration's pins and bans: None keeps them, and more uploaded
        references) and start the next round; returns its number."""
        record = await self._ready(session_id, "send feedback")
        for name, ids in (("liked_image_ids", liked), ("disliked_image_ids", disliked)):
            if len(ids) > MAX_FEEDBACK_IDS:
                raise InvalidArgument(f"{name} takes 0-{MAX_FEEDBACK_IDS} ids, got {len(ids)}", field=name)
        both = set(liked) & set(disliked)
        if both:
            raise InvalidArgument(f"image {sorted(both)[0]} is both liked and disliked", field="liked_image_ids")
        for image_id in [*liked, *disliked]:
            await self._own_image(session_id, image_id)
        if prompt is not None and not (prompt.strip() and len(prompt) <= MAX_PROMPT_CHARS):
            raise InvalidArgument(f"prompt must be 1-{MAX_PROMPT_CHARS} characters", field="prompt")
        earlier_refs = list(record.references)
        check_references(references, len(earlier_refs))
        first_refs = bool(references) and not earlier_refs  # unset weights then take the model's reference defaults
        defaults = await self.upstream.defaults() if constraints or first_refs else None
        if constraints and defaults:  # checked here: stored bad ones would fail every later round
            constraints.check(defaults.slots)
        rounds = len(record.rounds)
        if rounds >= self.max_rounds:
            raise FailedPrecondition(f"session has reached {self.max_rounds} rounds; finalize or start a new one")
        new_liked = [i for i in record.liked if i not in disliked] + [i for i in liked if i not in record.liked]
        new_disliked = ([i for i in record.disliked if i not in liked]
                        + [i for i in disliked if i not in record.disliked])
        number = rounds + 1
        await self.quotas.acquire(SESSIONS, session_id, self.quota_idle_s, tenant=record.tenant)
        refs = await self._save_references(session_id, references, len(earlier_refs))
        new_liked += refs
        # Per round, what this message liked and disliked: prompt exploration learns from each round's choice.
        choices = [*(c.to_json() for c in record.choices), Choice(rounds, tuple(liked), tuple(disliked)).to_json()]
        fields: dict[str, Any] = {"liked": new_liked, "disliked": new_disliked, "phase": Phase.GENERATING.value,
                                  "running_round": number, "heartbeat_ms": now_ms(), "choices": choices}
        if prompt is not None:
            fields["params"] = {**record.params, "prompt": prompt}
        if constraints is not None:
            fields["constraints"] = constraints.to_json()
        if refs:
            fields["references"] = earlier_refs + refs
        if first_refs and defaults:
            fields["weights"] = defaults.for_session(record.client_weights, True)
        await self._transition(session_id, fields, _unchanged(record), "send feedback")
        self._spawn(session_id, self._round(session_id, number), running_round(number))
        await self.activity.record("session.feedback", session_id, round=number, liked=liked, disliked=disliked,
                                   **({"prompt": prompt} if prompt is not None else {}))
        return number

    async def finalize(self, session_id: str, image_id: str, scale: int) -> None:
        """Choose an image and upscale it; the session ends when the final image is stored."""
        record = await self._ready(session_id, "finalize")
        image = await self._own_image(session_id, image_id)
        if scale < 0 or scale > 16:
            raise InvalidArgument(f"scale must be 0 (the upscaler's own) or the upscaler's factor, got {scale}",
                                  field="scale")
        await self.quotas.acquire(SESSIONS, session_id, self.quota_idle_s, tenant=record.tenant)
        await self._transition(session_id, {"phase": Phase.FINALIZING.value, "chosen": image_id,
                                            "heartbeat_ms": now_ms()}, _unchanged(record), "finalize")
        await self._touch(session_id, record)
        self._spawn(session_id, self._finalize(session_id, image, scale), finalizing(image_id))

    async def cancel(self, session_id: str, reason: str = "client") -> None:
        """Stop whatever runs (within one denoising step) and end the session; a no-op once ended."""
        record = await self._record(session_id)
        # One compare-and-set ends it: a round finishing on another replica after this point finds
        # the session cancelled and publishes nothing (and stops at its next heartbeat).
        live = [p.value for p in Phase if p not in TERMINAL_PHASES]
        ended = await self.store.update_record_if(SESSION_KIND, session_id,
                                                  {"phase": Phase.CANCELLED.value, "running_round": 0}, {"phase": live})
        task = self._tasks.get(session_id)
        if task is not None:
            await cancel_and_wait(task)
        if ended is None:
            return
        # The slot is free before anyone can see the session end.
        await self.quotas.release(SESSIONS, session_id, tenant=record.tenant)
        await self.activity.record("session.cancelled", session_id, tenant=record.tenant, reason=reason)
        await self._publish(session_id, SessionCancelled(reason), {})
        await self._end_stream(session_id)
        log.info("session.cancelled", session_id=session_id, reason=reason)

    async def close(self, grace_s: float = 0.0) -> None:
        """Shutdown: let running work finish for ``grace_s``, then fail it so clients can rerun it."""
        tasks = list(self._tasks.items())
        if tasks and grace_s > 0:
            await asyncio.wait([t for _, t in tasks], timeout=grace_s)
        for session_id, task in tasks:
            if task.done():
                continue
            await cancel_and_wait(task)
            with contextlib.suppress(PhilipError, Superseded, Exception):
                record = await self._record(session_id)
                await self._publish(
                    session_id,
                    SessionFailed(record.running_round, "UNAVAILABLE",
                                  "the gateway stopped during this step; send the feedback or finalize again"),
                    {"phase": Phase.AWAITING_FEEDBACK.value, "running_round": 0, "chosen": ""},
                    {"phase": [record.phase.value], "running_round": [record.running_round]},
                )

    # ---- queries ---------------------------------------------------------------------------------

    async def snapshot(self, session_id: str) -> SessionView:
        """The stored state; a round orphaned by a gateway that died is failed first."""
        record = await self._record(session_id)
        phase = record.phase
        stale = now_ms() - (record.heartbeat_ms or 0) > self.stale_after_s * 1000
        if phase in (Phase.GENERATING, Phase.FINALIZING) and session_id not in self._tasks and stale:
            # Only if its heartbeat has not moved since we read it: the replica running it may be just slow.
            with contextlib.suppress(Superseded):
                await self._publish(
                    session_id,
                    SessionFailed(record.running_round, "UNAVAILABLE",
                                  "the worker of this step stopped answering; send the feedback or finalize again"),
                    {"phase": Phase.AWAITING_FEEDBACK.value, "running_round": 0, "chosen": ""},
                    {"phase": [phase.value], "heartbeat_ms": [record.heartbeat_ms]},
                )
            record = await self._record(session_id)
        return await self._view(session_id, record)


def _unchanged(record: SessionRecord) -> Expect:
    """A command's precondition: still awaiting feedback after the same rounds it read (as stored)."""
    return {"phase": [Phase.AWAITING_FEEDBACK.value], "rounds": [record.stored.get("rounds")]}
