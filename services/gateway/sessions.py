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
import random
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from philip import metrics
from philip.activity import ActivityLog
from philip.exploration import SlotConstraints, beliefs_to_json
from philip.feedback_weights import parse_weights
from philip.image_owners import record_owner
from philip.logs import bind_ids, get_logger
from philip.quotas import GENERATIONS, SESSIONS, Quotas
from philip.rpc.auth import current_tenant
from philip.rpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    PhilipError,
    ResourceExhausted,
    Unavailable,
)
from philip.store import RecordNotFound, Store, StoreUnavailable
from services.gateway.references import check_references
from services.gateway.session_events import (
    TERMINAL_PHASES,
    Finalized,
    Phase,
    Picture,
    PreviewPictures,
    RoundImages,
    RoundOutput,
    RoundPreview,
    RoundProgress,
    RoundStarted,
    SessionCancelled,
    SessionFailed,
    SessionImage,
    SessionView,
    StepProgress,
    TileProgress,
    UpscaleProgress,
    Upstream,
)
from services.gateway.session_index import SessionIndex
from services.gateway.session_store import (
    SESSION_KIND,
    Expect,
    SessionEncoder,
    SessionStore,
    Superseded,
    now_ms,
    params_from_json,
    params_to_json,
    session_stream,
)
from services.generator.requests import MAX_PROMPT_CHARS, MAX_SEED, GenerationParams

log = get_logger("services.gateway.sessions")

MAX_FEEDBACK_IDS = 8  # per message and list
ROUND_SEED_STRIDE = 1000  # round r draws from base_seed + (r - 1) * stride (+ image index)
BUSY_WAIT_S = 300.0  # how long a round waits out full generator/refiner queues before it fails


class SessionManager(SessionStore):
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
        record = {
            "phase": Phase.GENERATING.value, "params": params_to_json(dataclasses.replace(params, seed=None)),
            "base_seed": base, "weights": dict(weights), "client_weights": client_weights, "references": refs,
            "rounds": [], "liked": list(refs), "disliked": [], "chosen": "",
            "final": None, "running_round": 1, "event_id": "0-0", "created_ms": now_ms(),
            "heartbeat_ms": now_ms(), "tenant": current_tenant(),
        }
        await self.store.put_record(SESSION_KIND, session_id, record, ttl_s=self.ttl_s)
        await self.index.add(session_id)
        log.info("session.started", session_id=session_id, prompt_chars=len(params.prompt))
        await self.activity.record("session.started", session_id, prompt=params.prompt)
        self._spawn(session_id, self._round(session_id, 1), _running(1))
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
        earlier_refs = list(record.get("references", []))
        check_references(references, len(earlier_refs))
        first_refs = bool(references) and not earlier_refs  # unset weights then take the model's reference defaults
        defaults = await self.upstream.defaults() if constraints or first_refs else None
        if constraints and defaults:  # checked here: stored bad ones would fail every later round
            constraints.check(defaults.slots)
        rounds = len(record["rounds"])
        if rounds >= self.max_rounds:
            raise FailedPrecondition(f"session has reached {self.max_rounds} rounds; finalize or start a new one")
        new_liked = [i for i in record["liked"] if i not in disliked] + [i for i in liked if i not in record["liked"]]
        new_disliked = ([i for i in record["disliked"] if i not in liked]
                        + [i for i in disliked if i not in record["disliked"]])
        number = rounds + 1
        await self.quotas.acquire(SESSIONS, session_id, self.quota_idle_s, tenant=record.get("tenant", ""))
        refs = await self._save_references(session_id, references, len(earlier_refs))
        new_liked += refs
        # Per round, what this message liked and disliked: prompt exploration learns from each round's choice.
        choices = [*record.get("choices", []), {"round": rounds, "liked": list(liked), "disliked": list(disliked)}]
        fields: dict[str, Any] = {"liked": new_liked, "disliked": new_disliked, "phase": Phase.GENERATING.value,
                                  "running_round": number, "heartbeat_ms": now_ms(), "choices": choices}
        if prompt is not None:
            fields["params"] = {**record["params"], "prompt": prompt}
        if constraints is not None:
            fields["constraints"] = constraints.to_json()
        if refs:
            fields["references"] = earlier_refs + refs
        if first_refs and defaults:
            fields["weights"] = defaults.for_session(record.get("client_weights", record["weights"]), True)
        await self._transition(session_id, fields, _unchanged(record), "send feedback")
        self._spawn(session_id, self._round(session_id, number), _running(number))
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
        await self.quotas.acquire(SESSIONS, session_id, self.quota_idle_s, tenant=record.get("tenant", ""))
        await self._transition(session_id, {"phase": Phase.FINALIZING.value, "chosen": image_id,
                                            "heartbeat_ms": now_ms()}, _unchanged(record), "finalize")
        await self._touch(session_id, record)
        self._spawn(session_id, self._finalize(session_id, image, scale), _finalizing(image_id))

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
            await _cancel_and_wait(task)
        if ended is None:
            return
        # The slot is free before anyone can see the session end.
        await self.quotas.release(SESSIONS, session_id, tenant=record.get("tenant", ""))
        await self.activity.record("session.cancelled", session_id, tenant=record.get("tenant", ""), reason=reason)
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
            await _cancel_and_wait(task)
            with contextlib.suppress(PhilipError, Superseded, Exception):
                record = await self._record(session_id)
                await self._publish(
                    session_id,
                    SessionFailed(int(record["running_round"]), "UNAVAILABLE",
                                  "the gateway stopped during this step; send the feedback or finalize again"),
                    {"phase": Phase.AWAITING_FEEDBACK.value, "running_round": 0, "chosen": ""},
                    {"phase": [record["phase"]], "running_round": [record["running_round"]]},
                )

    # ---- queries ---------------------------------------------------------------------------------

    async def snapshot(self, session_id: str) -> SessionView:
        """The stored state; a round orphaned by a gateway that died is failed first."""
        record = await self._record(session_id)
        phase = Phase(record["phase"])
        stale = now_ms() - int(record.get("heartbeat_ms", 0)) > self.stale_after_s * 1000
        if phase in (Phase.GENERATING, Phase.FINALIZING) and session_id not in self._tasks and stale:
            # Only if its heartbeat has not moved since we read it: the replica running it may be just slow.
            with contextlib.suppress(Superseded):
                await self._publish(
                    session_id,
                    SessionFailed(int(record["running_round"]), "UNAVAILABLE",
                                  "the worker of this step stopped answering; send the feedback or finalize again"),
                    {"phase": Phase.AWAITING_FEEDBACK.value, "running_round": 0, "chosen": ""},
                    {"phase": [phase.value], "heartbeat_ms": [record.get("heartbeat_ms")]},
                )
            record = await self._record(session_id)
        return await self._view(session_id, record)

    # ---- work -------------------------------------------------------------------------------------

    def _spawn(self, session_id: str, work: Any, expect: Expect) -> None:
        task = asyncio.get_running_loop().create_task(self._beating(session_id, work, expect),
                                                      name=f"session-{session_id}")
        self._tasks[session_id] = task
        metrics.SESSIONS_ACTIVE.set(len(self._tasks))

        def done(t: asyncio.Task[Any]) -> None:
            if self._tasks.get(session_id) is t:
                del self._tasks[session_id]
            metrics.SESSIONS_ACTIVE.set(len(self._tasks))

        task.add_done_callback(done)

    async def _beating(self, session_id: str, work: Any, expect: Expect) -> None:
        """Run ``work`` with a heartbeat in the record, also while it waits in a queue, so no replica
        declares it stale; once the session has moved on without it (cancelled elsewhere), stop it."""
        owner = asyncio.current_task()
        assert owner is not None

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.stale_after_s / 4)
                try:
                    alive = await self.store.update_record_if(SESSION_KIND, session_id,
                                                              {"heartbeat_ms": now_ms()}, expect)
                except StoreUnavailable:
                    continue  # staleness needs a whole stale_after_s without a beat
                except RecordNotFound:
                    alive = None
                if alive is None:
                    log.info("session.superseded", session_id=session_id)
                    owner.cancel()
                    return

        heart = asyncio.get_running_loop().create_task(beat(), name=f"heartbeat-{session_id}")
        try:
            await work
        finally:
            heart.cancel()

    async def _round(self, session_id: str, number: int) -> None:
        with bind_ids(session_id=session_id):
            superseded: list[str] = []  # the round's previews and progress ticks: gone once it has ended
            try:
                await self._run_round_retrying(session_id, number, superseded)
            except asyncio.CancelledError:
                raise
            except Superseded:
                log.info("session.round_superseded", round=number)
            except Exception as exc:
                failure = (SessionFailed(number, exc.code, str(exc)) if isinstance(exc, PhilipError)
                           else SessionFailed(number, "INTERNAL", f"round {number} failed: {exc}"))
                if isinstance(exc, PhilipError):
                    log.info("session.round_failed", round=number, code=exc.code, error=str(exc))
                else:
                    log.exception("session.round_crashed", round=number)
                with contextlib.suppress(Superseded):
                    await self._publish(session_id, failure, {"phase": Phase.AWAITING_FEEDBACK.value,
                                                              "running_round": 0}, _running(number))
            finally:
                with contextlib.suppress(Exception):
                    await self.store.delete_events(session_stream(session_id), superseded)

    async def _run_round_retrying(self, session_id: str, number: int, superseded: list[str]) -> None:
        """A replica that went away gets one more try (round-robin picks another); a full queue
        is waited out with jittered backoff for up to ``BUSY_WAIT_S``: a person would rather wait
        in line than see the round fail."""
        retried, waited, backoff = False, 0.0, 0.5
        while True:
            try:
                await self._run_round(session_id, number, superseded)
                return
            except Unavailable as exc:
                if retried:
                    raise
                retried = True
                log.warning("session.round_retry", round=number, error=str(exc))
            except ResourceExhausted as exc:
                if waited >= BUSY_WAIT_S:
                    raise
                delay = (exc.retry_after_s or backoff) * random.uniform(0.5, 1.5)
                log.info("session.round_waiting", round=number, delay_s=round(delay, 2))
                metrics.ROUND_WAITS.inc()
                await asyncio.sleep(delay)
                waited += delay
                backoff = min(backoff * 2, 5.0)

    async def _run_round(self, session_id: str, number: int, superseded: list[str]) -> None:
        record = await self._record(session_id)
        params = params_from_json(record["params"])
        params = dataclasses.replace(params, seed=int(record["base_seed"]) + (number - 1) * ROUND_SEED_STRIDE)
        liked = [await self._require_image(i) for i in record["liked"][-self.max_references:]]
        disliked = [await self._require_image(i) for i in record["disliked"][-self.max_references:]]
        await self._publish(
            session_id,
            RoundStarted(number, params.prompt, params.num_images or 4, len(liked), len(disliked)),
            {"phase": Phase.GENERATING.value, "running_round": number, "heartbeat_ms": now_ms()}, _running(number),
        )
        await self._touch(session_id, record)
        round_id = f"{session_id}-r{number}"
        explores = number > 1 and record["weights"].get("explore", 0.0) > 0
        if liked or disliked or explores:
            history = await self._history(record) if explores else []
            # Round 1 (with references) has no choices to explore from: every image follows the references.
            weights = record["weights"] if explores else {**record["weights"], "explore": 0.0}
            events = self.upstream.feedback_round(params, round_id, liked, disliked, weights, history,
                                                  SlotConstraints.from_json(record.get("constraints")))
        else:
            events = self.upstream.plain_round(params, round_id)
        # aclosing: a cancel that lands between events (e.g. in a store write) still closes the
        # upstream call at once, so the worker stops within one step.
        output = None
        async with self.quotas.hold(GENERATIONS, round_id), contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, StepProgress):
                    superseded.append(await self._publish(
                        session_id, RoundProgress(number, event.step, event.total_steps), {"heartbeat_ms": now_ms()},
                        _running(number)))
                elif isinstance(event, PreviewPictures):
                    superseded.append(await self._publish(session_id, RoundPreview(number, event.step,
                                                                                   event.pictures)))
                elif isinstance(event, RoundOutput):
                    output = event
                    break
        if output is None:  # the generation slot is free before anyone sees the images
            raise PhilipError(f"round {number} ended without images")
        images = tuple(dataclasses.replace(img, round=number, prompt=img.prompt or params.prompt)
                       for img in output.images)
        for image in images:
            await self._save_image(session_id, image)
        entry = {"round": number, "image_ids": [i.image_id for i in images],
                 "compute": dataclasses.asdict(output.compute), "learned": beliefs_to_json(output.learned)}
        record = await self._record(session_id)
        # Trimmed before the images appear: whoever sees them finds no stale previews before them.
        await self.store.delete_events(session_stream(session_id), superseded)
        superseded.clear()
        await self._publish(session_id, RoundImages(number, images, output.compute, output.learned),
                            {"rounds": [*record["rounds"], entry], "phase": Phase.AWAITING_FEEDBACK.value,
                             "running_round": 0}, _running(number))
        await self._touch(session_id, {**record, "rounds": [*record["rounds"], entry]})
        log.info("session.round_done", round=number, images=len(images), unet_evals=output.compute.total)

    async def _finalize(self, session_id: str, image: SessionImage, scale: int) -> None:
        with bind_ids(session_id=session_id):
            try:
                async for event in self.upstream.upscale(image.picture, scale):
                    if isinstance(event, TileProgress):
                        await self._publish(session_id, UpscaleProgress(event.done, event.total),
                                            {"heartbeat_ms": now_ms()}, _finalizing(image.image_id))
                        continue
                    final = Finalized(f"final_{uuid.uuid4().hex}", event, image.image_id)
                    await self.store.put_blob(final.image_id, event.png, self.ttl_s)
                    await record_owner(self.store, final.image_id, self.ttl_s, session_id=session_id)
                    meta = {"image_id": final.image_id, "width": event.width, "height": event.height,
                            "source_image_id": image.image_id}
                    await self.quotas.release(SESSIONS, session_id)
                    await self.activity.record("session.finalized", session_id, image_id=image.image_id,
                                               final_image_id=final.image_id, size=f"{event.width}x{event.height}")
                    await self._publish(session_id, final, {"phase": Phase.DONE.value, "final": meta},
                                        _finalizing(image.image_id))
                    await self._end_stream(session_id)
                    log.info("session.finalized", image_id=image.image_id, size=f"{event.width}x{event.height}")
                    return
                raise PhilipError("upscale ended without an image")
            except asyncio.CancelledError:
                raise
            except Superseded:
                log.info("session.finalize_superseded")
            except Exception as exc:
                code = exc.code if isinstance(exc, PhilipError) else "INTERNAL"
                if code == "INTERNAL":
                    log.exception("session.finalize_crashed")
                with contextlib.suppress(Superseded):
                    await self._publish(session_id, SessionFailed(0, code, str(exc)),
                                        {"phase": Phase.AWAITING_FEEDBACK.value, "chosen": ""},
                                        _finalizing(image.image_id))


def _running(number: int) -> Expect:
    """What a round's work expects of the record: still its round, still generating."""
    return {"phase": [Phase.GENERATING.value], "running_round": [number]}


def _finalizing(image_id: str) -> Expect:
    return {"phase": [Phase.FINALIZING.value], "chosen": [image_id]}


def _unchanged(record: dict[str, Any]) -> Expect:
    """A command's precondition: still awaiting feedback after the same rounds it read."""
    return {"phase": [Phase.AWAITING_FEEDBACK.value], "rounds": [record["rounds"]]}


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end.

    redis-py can swallow a cancellation that lands while it resets a pipeline connection, leaving
    the task running (state "cancelling"); so cancel again until it has really stopped.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
