"""The session manager's view of the store: records, images and the event stream of a session.

Store keys: ``session:{id}`` (the record), ``simage:{image_id}`` + ``blob:{image_id}`` (round
images), stream ``session:{id}`` (events). See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any

from philip.exploration import RoundChoice
from philip.generation.jobs import JOB_KIND, job_stream
from philip.generation.requests import GenerationParams
from philip.image_owners import IMAGE_OWNER_KIND, record_owner
from philip.rpc.auth import owned_by_caller
from philip.rpc.errors import FailedPrecondition, InvalidArgument, NotFound
from philip.store import Store
from philip.store.base import StreamEntry
from services.gateway.session_events import (
    TERMINAL_PHASES,
    Finalized,
    NoiseTrace,
    Phase,
    Picture,
    RoundImages,
    SessionEvent,
    SessionImage,
    SessionView,
)
from services.gateway.session_record import SessionRecord

SESSION_KIND = "session"
IMAGE_KIND = "simage"
SessionEncoder = Callable[[str, SessionEvent], bytes]
Expect = Mapping[str, Collection[Any]]


class Superseded(Exception):
    """The session moved on without this work (cancelled, failed as stale, or another replica's
    command won the compare-and-set): the work stops quietly and publishes nothing more."""


def session_stream(session_id: str) -> str:
    return f"session:{session_id}"


def params_to_json(params: GenerationParams) -> dict[str, Any]:
    data = dataclasses.asdict(params)
    data["adapter_ids"] = list(params.adapter_ids)
    return data


def params_from_json(data: dict[str, Any]) -> GenerationParams:
    return GenerationParams(**{**data, "adapter_ids": tuple(data.get("adapter_ids", ()))})


class SessionStore:
    """Reads and writes one session's state; ``SessionManager`` adds the commands and the work."""

    def __init__(self, store: Store, encode_event: SessionEncoder, ttl_s: float) -> None:
        self.store = store
        self.encode_event = encode_event
        self.ttl_s = ttl_s

    async def visible(self, session_id: str) -> None:
        """NotFound unless the caller may see ``session_id`` (before a stream promises an answer)."""
        await self._record(session_id)

    async def job_visible(self, job_id: str) -> None:
        """NotFound unless the caller may see generation job ``job_id``."""
        job = await self.store.get_record(JOB_KIND, job_id) if job_id else None
        if job is None or not owned_by_caller(job):  # another tenant's job reads as unknown
            raise NotFound(f"no job {job_id!r} (unknown or expired)", field="job_id")

    async def follow(self, session_id: str, after: str = "0-0") -> AsyncIterator[bytes]:
        """The session's encoded events after ``after`` (replay, then live) until it ends."""
        async for entry in self.follow_entries(session_id, after):
            yield entry.payload

    async def follow_entries(self, session_id: str, after: str = "0-0") -> AsyncIterator[StreamEntry]:
        """As :meth:`follow`, with each event's store stream id (HTTP's SSE ``id:``)."""
        await self._record(session_id)
        async for entry in self.store.subscribe(session_stream(session_id), after=after):
            yield entry

    async def follow_job(self, job_id: str) -> AsyncIterator[bytes]:
        """A generation job's encoded events from the start (replay, then live) until it ends."""
        async for entry in self.follow_job_entries(job_id):
            yield entry.payload

    async def follow_job_entries(self, job_id: str, after: str = "0-0") -> AsyncIterator[StreamEntry]:
        """As :meth:`follow_job`, after ``after``, with each event's store stream id."""
        await self.job_visible(job_id)
        async for entry in self.store.subscribe(job_stream(job_id), after=after):
            yield entry

    async def _publish(self, session_id: str, event: SessionEvent, fields: dict[str, Any] | None = None,
                       expect: Expect | None = None) -> str:
        """Append ``event`` (after merging ``fields``, only while ``expect`` holds: else Superseded); its id."""
        # State first, so a client reacting to the event finds the session already in its new phase;
        # then the event; then the record points at it. A snapshot taken in between replays the event
        # once more (readers tolerate that); no order loses one.
        if fields and expect is not None:
            if await self.store.update_record_if(SESSION_KIND, session_id, fields, expect) is None:
                raise Superseded(f"session {session_id} moved on before {type(event).__name__}")
        elif fields:
            await self.store.update_record(SESSION_KIND, session_id, fields)
        event_id = await self.store.append_event(session_stream(session_id), self.encode_event(session_id, event))
        if fields is not None:
            await self.store.update_record(SESSION_KIND, session_id, {"event_id": event_id})
        return event_id

    async def _transition(self, session_id: str, fields: dict[str, Any], expect: Expect, action: str) -> None:
        """A command's state change as one compare-and-set: of two replicas racing, one wins and the other
        gets FAILED_PRECONDITION, as if it had come second."""
        if await self.store.update_record_if(SESSION_KIND, session_id, fields, expect) is not None:
            return
        await self._ready(session_id, action)  # names what runs now, when that is why
        raise FailedPrecondition(f"cannot {action}: another request changed this session at the same moment; "
                                 "look at its new state and try again")

    async def _touch(self, session_id: str, record: SessionRecord) -> None:
        """Activity: every key of the session lives ``ttl_s`` (PHILIP_SESSION_IDLE_S) from now."""
        images = record.image_ids
        finals = [record.final.image_id] if record.final else []
        await self.store.refresh_ttl(
            self.ttl_s, records=[(SESSION_KIND, session_id), *((IMAGE_KIND, i) for i in images),
                                 *((IMAGE_OWNER_KIND, i) for i in images + finals)],
            blobs=images + finals, streams=[session_stream(session_id)])

    async def _end_stream(self, session_id: str) -> None:
        await self.store.close_stream(session_stream(session_id))
        await self.store.expire_stream(session_stream(session_id), self.ttl_s)

    async def _record(self, session_id: str) -> SessionRecord:
        if not session_id:
            raise InvalidArgument("session_id is required", field="session_id")
        record = await self.store.get_record(SESSION_KIND, session_id)
        if record is None or not owned_by_caller(record):  # another tenant's session reads as unknown
            raise NotFound(f"no session {session_id!r} (unknown or expired)", field="session_id")
        return SessionRecord.from_record(record)

    async def _ready(self, session_id: str, action: str) -> SessionRecord:
        record = await self._record(session_id)
        phase = record.phase
        if phase is Phase.AWAITING_FEEDBACK:
            return record
        if phase in TERMINAL_PHASES:
            raise FailedPrecondition(f"session {session_id} has ended ({phase.value}); start a new one")
        what = f"round {record.running_round}" if phase is Phase.GENERATING else "the upscale"
        raise FailedPrecondition(f"cannot {action} while {what} is running; wait for it or cancel")

    async def _own_image(self, session_id: str, image_id: str) -> SessionImage:
        meta = await self.store.get_record(IMAGE_KIND, image_id) if image_id else None
        if meta is None:
            raise NotFound(f"no image {image_id!r} (unknown or expired)", field="image_id")
        if meta["session_id"] != session_id:
            raise InvalidArgument(f"image {image_id} belongs to another session", field="image_id")
        return await self._require_image(image_id)

    async def _view(self, session_id: str, record: SessionRecord) -> SessionView:
        """The session as a record and its stored images say it is."""
        rounds = []
        for entry in record.rounds:
            images = [img for img in [await self._load_image(i) for i in entry.image_ids] if img is not None]
            rounds.append(RoundImages(entry.round, tuple(images), entry.compute, entry.learned))
        final = None
        if record.final:
            png = await self.store.get_blob(record.final.image_id)
            if png is not None:
                meta = record.final
                final = Finalized(meta.image_id, Picture(png, meta.width, meta.height), meta.source_image_id)
        return SessionView(
            session_id=session_id, phase=record.phase, params=record.params, rounds=tuple(rounds),
            liked=record.liked, disliked=record.disliked, chosen=record.chosen, final=final,
            running_round=record.running_round, event_id=record.event_id, weights=record.weights,
            learned=next((r.learned for r in reversed(rounds) if r.learned), ()), constraints=record.constraints,
        )

    async def _save_references(self, session_id: str, pictures: Sequence[Picture], first: int) -> list[str]:
        """Store uploaded references as images of the session (round 0); returns their ids."""
        ids = []
        for k, picture in enumerate(pictures, start=first):
            image = SessionImage(f"ref_{uuid.uuid4().hex}", 0, k, 0, picture, NoiseTrace(0), prompt="(reference)")
            await self._save_image(session_id, image)
            await record_owner(self.store, image.image_id, self.ttl_s, session_id=session_id)
            ids.append(image.image_id)
        return ids

    async def _save_image(self, session_id: str, image: SessionImage) -> None:
        await self.store.put_blob(image.image_id, image.picture.png, self.ttl_s)
        await self.store.put_record(IMAGE_KIND, image.image_id, {
            "session_id": session_id, "round": image.round, "index": image.index, "seed": image.seed,
            "width": image.picture.width, "height": image.picture.height, "origin": image.origin.to_json(),
            "steered_from": image.steered_from, "prompt": image.prompt,
        }, ttl_s=self.ttl_s)

    async def _load_image(self, image_id: str) -> SessionImage | None:
        meta = await self.store.get_record(IMAGE_KIND, image_id)
        png = await self.store.get_blob(image_id) if meta is not None else None
        if meta is None or png is None:
            return None
        return SessionImage(image_id, meta["round"], meta["index"], meta["seed"],
                            Picture(png, meta["width"], meta["height"]), NoiseTrace.from_json(meta["origin"]),
                            meta["steered_from"], meta.get("prompt", ""))

    async def _require_image(self, image_id: str) -> SessionImage:
        image = await self._load_image(image_id)
        if image is None:
            raise NotFound(f"image {image_id!r} has expired", field="image_id")
        return image

    async def _history(self, record: SessionRecord) -> list[RoundChoice]:
        """Each finished round's prompts with the first image liked and disliked in the feedback after it."""
        choices = {c.round: c for c in record.choices}
        history = []
        for entry in record.rounds:
            images = [await self._load_image(i) for i in entry.image_ids]
            if any(i is None for i in images) or entry.round not in choices:
                continue  # expired images or no feedback after it: nothing to learn from that round
            ids = list(entry.image_ids)
            choice = choices[entry.round]
            picks = [next((ids.index(i) for i in picked if i in ids), None)
                     for picked in (choice.liked, choice.disliked)]
            history.append(RoundChoice(tuple(i.prompt for i in images if i is not None), picks[0], picks[1]))
        return history


def params_of(view: SessionView) -> GenerationParams:
    return params_from_json(view.params)
