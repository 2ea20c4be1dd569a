"""The work of sessions: rounds and upscales as tasks of the manager, each with a heartbeat.

Each piece of work expects the session record to stay as its command left it (``running_round(n)``:
still generating round n; ``finalizing(id)``); every write it makes is a compare-and-set on that,
so a session cancelled or failed elsewhere (another replica) makes it stop quietly (``Superseded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import uuid
from typing import Any

from philip import metrics
from philip.activity import ActivityLog
from philip.clock import now_ms
from philip.image_owners import record_owner
from philip.logs import bind_ids, get_logger
from philip.quotas import GENERATIONS, SESSIONS, Quotas
from philip.rpc.errors import PhilipError, ResourceExhausted, Unavailable
from philip.store import RecordNotFound, StoreUnavailable
from services.gateway.session_events import (
    Finalized,
    Phase,
    PreviewPictures,
    RoundImages,
    RoundOutput,
    RoundPreview,
    RoundProgress,
    RoundStarted,
    SessionFailed,
    SessionImage,
    StepProgress,
    TileProgress,
    UpscaleProgress,
    Upstream,
)
from services.gateway.session_record import RoundEntry
from services.gateway.session_store import (
    SESSION_KIND,
    Expect,
    SessionStore,
    Superseded,
    params_from_json,
    session_stream,
)

log = get_logger("services.gateway.sessions")

ROUND_SEED_STRIDE = 1000  # round r draws from base_seed + (r - 1) * stride (+ image index)
BUSY_WAIT_S = 300.0  # how long a round waits out full generator/refiner queues before it fails


class SessionWork(SessionStore):
    """Rounds and upscales of sessions, run as tasks; ``SessionManager`` adds the commands."""

    upstream: Upstream
    quotas: Quotas
    activity: ActivityLog
    max_references: int
    stale_after_s: float
    _tasks: dict[str, asyncio.Task[None]]

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
                code, message = _failure(exc, f"round {number} failed", "send the feedback again")
                if code == "INTERNAL":
                    log.exception("session.round_crashed", round=number)
                else:
                    log.info("session.round_failed", round=number, code=code, error=message)
                await self._fail_step(session_id, SessionFailed(number, code, message),
                                      {"phase": Phase.AWAITING_FEEDBACK.value, "running_round": 0},
                                      running_round(number))
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
        params = params_from_json(record.params)
        params = dataclasses.replace(params, seed=record.base_seed + (number - 1) * ROUND_SEED_STRIDE)
        liked = [await self._require_image(i) for i in record.liked[-self.max_references:]]
        disliked = [await self._require_image(i) for i in record.disliked[-self.max_references:]]
        await self._publish(
            session_id,
            RoundStarted(number, params.prompt, params.num_images or 4, len(liked), len(disliked)),
            {"phase": Phase.GENERATING.value, "running_round": number, "heartbeat_ms": now_ms()}, running_round(number),
        )
        await self._touch(session_id, record)
        round_id = f"{session_id}-r{number}"
        explores = number > 1 and record.weights.get("explore", 0.0) > 0
        if liked or disliked or explores:
            history = await self._history(record) if explores else []
            # Round 1 (with references) has no choices to explore from: every image follows the references.
            weights = record.weights if explores else {**record.weights, "explore": 0.0}
            events = self.upstream.feedback_round(params, round_id, liked, disliked, weights, history,
                                                  record.constraints)
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
                        running_round(number)))
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
        entry = RoundEntry(number, tuple(i.image_id for i in images), output.compute, output.learned)
        record = await self._record(session_id)
        # Trimmed before the images appear: whoever sees them finds no stale previews before them.
        await self.store.delete_events(session_stream(session_id), superseded)
        superseded.clear()
        await self._publish(session_id, RoundImages(number, images, output.compute, output.learned),
                            {"rounds": [*record.stored["rounds"], entry.to_json()],
                             "phase": Phase.AWAITING_FEEDBACK.value, "running_round": 0}, running_round(number))
        await self._touch(session_id, dataclasses.replace(record, rounds=(*record.rounds, entry)))
        log.info("session.round_done", round=number, images=len(images), unet_evals=output.compute.total)

    async def _finalize(self, session_id: str, image: SessionImage, scale: int) -> None:
        with bind_ids(session_id=session_id):
            try:
                async for event in self.upstream.upscale(image.picture, scale):
                    if isinstance(event, TileProgress):
                        await self._publish(session_id, UpscaleProgress(event.done, event.total),
                                            {"heartbeat_ms": now_ms()}, finalizing(image.image_id))
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
                                        finalizing(image.image_id))
                    await self._end_stream(session_id)
                    log.info("session.finalized", image_id=image.image_id, size=f"{event.width}x{event.height}")
                    return
                raise PhilipError("upscale ended without an image")
            except asyncio.CancelledError:
                raise
            except Superseded:
                log.info("session.finalize_superseded")
            except Exception as exc:
                code, message = _failure(exc, "the upscale failed", "finalize again")
                if code == "INTERNAL":
                    log.exception("session.finalize_crashed")
                await self._fail_step(session_id, SessionFailed(0, code, message),
                                      {"phase": Phase.AWAITING_FEEDBACK.value, "chosen": ""},
                                      finalizing(image.image_id))

    async def _fail_step(self, session_id: str, failure: SessionFailed, fields: dict[str, Any],
                         expect: Expect) -> None:
        """Record a failed step; through a store outage, keep trying for about the stale time (after it,
        any replica that reads the session fails the step itself)."""
        delay, waited = 0.2, 0.0
        while True:
            try:
                await self._publish(session_id, failure, fields, expect)
                return
            except Superseded:
                return
            except StoreUnavailable:
                if waited >= self.stale_after_s:
                    log.warning("session.failure_unrecorded", code=failure.code)
                    return
                await asyncio.sleep(delay)
                waited, delay = waited + delay, min(delay * 2, 2.0)


def _failure(exc: Exception, what: str, again: str) -> tuple[str, str]:
    """(code, message) of a step's failure: a domain error's own, UNAVAILABLE for a store outage, else INTERNAL."""
    if isinstance(exc, PhilipError):
        return exc.code, str(exc)
    if isinstance(exc, StoreUnavailable):
        return "UNAVAILABLE", f"{what}: the session store was unreachable ({exc}); {again}"
    return "INTERNAL", f"{what}: {exc}"


def running_round(number: int) -> Expect:
    """What a round's work expects of the record: still its round, still generating."""
    return {"phase": [Phase.GENERATING.value], "running_round": [number]}


def finalizing(image_id: str) -> Expect:
    return {"phase": [Phase.FINALIZING.value], "chosen": [image_id]}


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end.

    redis-py can swallow a cancellation that lands while it resets a pipeline connection, leaving
    the task running (state "cancelling"); so cancel again until it has really stopped.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
