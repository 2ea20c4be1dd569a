"""The session domain without sockets: a scripted upstream, the real stores (memory and Redis)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest
from PIL import Image

from philip.exploration import RoundChoice, SessionDefaults, SlotConstraints
from philip.feedback_weights import builtin_weights
from philip.generation.requests import GenerationParams
from philip.quotas import GENERATIONS, SESSIONS, Quotas
from philip.rpc.auth import acting_as
from philip.rpc.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from philip.store import MemoryStore, RedisStore, Store
from philip.v1 import gateway_pb2
from services.gateway import codec
from services.gateway import session_work as sessions_module
from services.gateway.session_events import (
    Compute,
    NoiseTrace,
    Phase,
    Picture,
    PreviewPictures,
    RoundEvent,
    RoundOutput,
    SessionImage,
    StepProgress,
    TileProgress,
    UpscaleEvent,
)
from services.gateway.sessions import SessionManager

REDIS_URL = "redis://127.0.0.1:6379/15"


def _png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


class ScriptedUpstream:
    """Records what it was asked; rounds wait on ``gate`` when set (to hold a round 'running')."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[str], int | None]] = []
        self.gate: asyncio.Event | None = None
        self.output_gate: asyncio.Event | None = None  # when set, rounds hold their images back until it is
        self.fail_next: Exception | None = None
        self.full_for = 0  # the next this many rounds find the queue full
        self.cancelled = 0
        self.histories: list[list[RoundChoice]] = []  # what each feedback round was told of earlier rounds
        self.session_defaults = SessionDefaults(builtin_weights(), slots=(("bg", ("red", "blue", "green")),))
        self.constraints: list[SlotConstraints] = []  # what each feedback round was told to honour

    async def _round(self, kind: str, params: GenerationParams, round_id: str, liked: Sequence[SessionImage],
                     disliked: Sequence[SessionImage]) -> AsyncGenerator[RoundEvent, None]:
        self.calls.append((kind, [i.image_id for i in liked], [i.image_id for i in disliked], params.seed))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if self.full_for > 0:
            self.full_for -= 1
            raise ResourceExhausted("generation queue is full", retry_after_s=0.02)
        n = params.num_images or 4
        try:
            yield StepProgress(1, 2)
            if self.gate is not None:
                await self.gate.wait()
            yield PreviewPictures(1, tuple(Picture(_png((9, 9, 9)), 8, 8) for _ in range(n)))
            yield StepProgress(2, 2)
        except (asyncio.CancelledError, GeneratorExit):  # cancelled mid-await, or closed between events
            self.cancelled += 1
            raise
        if self.output_gate is not None:
            await self.output_gate.wait()
        seed = params.seed or 0
        images = tuple(SessionImage(f"{round_id}-{i}", 0, i, seed + i, Picture(_png((i * 40, 0, 0)), 8, 8),
                                    NoiseTrace(seed + i)) for i in range(n))
        yield RoundOutput(images, Compute(2, 2 * n * 2))

    def plain_round(self, params: GenerationParams, round_id: str) -> AsyncGenerator[RoundEvent, None]:
        return self._round("plain", params, round_id, (), ())

    def feedback_round(self, params: GenerationParams, round_id: str, liked: Sequence[SessionImage],
                       disliked: Sequence[SessionImage], weights: dict[str, float],
                       history: Sequence[RoundChoice] = (),
                       constraints: SlotConstraints = SlotConstraints()) -> AsyncGenerator[RoundEvent, None]:
        self.histories.append(list(history))
        self.constraints.append(constraints)
        return self._round("feedback", params, round_id, liked, disliked)

    async def defaults(self) -> SessionDefaults:
        return self.session_defaults

    async def upscale(self, picture: Picture, scale: int) -> AsyncIterator[UpscaleEvent]:
        yield TileProgress(1, 1)
        yield Picture(_png((1, 2, 3), picture.width * 4), picture.width * 4, picture.height * 4)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        mem = MemoryStore()
        yield mem
        await mem.close()
        return
    redis = RedisStore(REDIS_URL, prefix=f"philip-test:{uuid.uuid4().hex}:", socket_timeout=2.0)
    if not await redis.ping():
        pytest.skip("Redis not reachable")
    yield redis
    await redis.close()


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@pytest.fixture
async def manager(store: Store, upstream: ScriptedUpstream) -> AsyncIterator[SessionManager]:
    m = SessionManager(store, upstream, encode_event=codec.encode_event, ttl_s=600)
    yield m
    await m.close()


async def _events_until(manager: SessionManager, session_id: str, kind: str, after: str = "0-0",
                        timeout: float = 5.0) -> list[gateway_pb2.SessionEvent]:
    seen = []

    async def read() -> None:
        async for payload in manager.follow(session_id, after):
            event = gateway_pb2.SessionEvent.FromString(payload)
            seen.append(event)
            if event.WhichOneof("event") == kind:
                return

    await asyncio.wait_for(read(), timeout)
    return seen


async def _round_done(manager: SessionManager, session_id: str, number: int) -> gateway_pb2.RoundImages:
    events = await _events_until_round(manager, session_id, number)
    return events[-1].round_images


async def _events_until_round(manager: SessionManager, session_id: str, number: int) -> list[gateway_pb2.SessionEvent]:
    seen: list[gateway_pb2.SessionEvent] = []

    async def read() -> None:
        async for payload in manager.follow(session_id):
            event = gateway_pb2.SessionEvent.FromString(payload)
            seen.append(event)
            if event.WhichOneof("event") == "round_images" and event.round == number:
                return

    await asyncio.wait_for(read(), 5.0)
    return seen


async def test_a_whole_session_keeps_everything_in_the_store(manager: SessionManager,
                                                             upstream: ScriptedUpstream) -> None:
    sid = await manager.start(GenerationParams(prompt="a circle", num_images=3, seed=100), {})
    first = await _round_done(manager, sid, 1)
    assert [i.image.seed for i in first.images] == [100, 101, 102]
    liked, disliked = first.images[0].image.id, first.images[2].image.id
    assert await manager.feedback(sid, [liked], [disliked]) == 2
    second = await _round_done(manager, sid, 2)
    # Round 2 goes to the refiner with the feedback, and draws from the next seed block.
    assert upstream.calls[1] == ("feedback", [liked], [disliked], 1100)
    await manager.finalize(sid, second.images[1].image.id, 0)
    events = await _events_until(manager, sid, "final")
    assert events[-1].final.image.width == 32 and events[-1].final.source_image_id == second.images[1].image.id
    view = await manager.snapshot(sid)
    assert view.phase is Phase.DONE and [r.round for r in view.rounds] == [1, 2]
    assert view.liked == (liked,) and view.disliked == (disliked,) and view.chosen == second.images[1].image.id
    assert view.final is not None and Image.open(io.BytesIO(view.final.picture.png)).size == (32, 32)


async def test_exploring_sessions_tell_the_refiner_each_rounds_prompts_and_choice(manager: SessionManager,
                                                                                  upstream: ScriptedUpstream) -> None:
    sid = await manager.start(GenerationParams(prompt="a circle", num_images=3, seed=1), {"explore": 1.0})
    first = await _round_done(manager, sid, 1)
    assert [i.prompt for i in first.images] == ["a circle"] * 3  # a plain round's images keep the round's prompt
    ids = [i.image.id for i in first.images]
    await manager.feedback(sid, [], [ids[2]])  # no like: exploration alone still asks the refiner
    second = await _round_done(manager, sid, 2)
    assert upstream.calls[1][0] == "feedback"
    assert upstream.histories[0] == [RoundChoice(("a circle",) * 3, None, 2)]
    later = [i.image.id for i in second.images]
    await manager.feedback(sid, [later[1], ids[0]], [])  # the first of the round's own images counts
    await _round_done(manager, sid, 3)
    assert upstream.histories[1] == [RoundChoice(("a circle",) * 3, None, 2), RoundChoice(("a circle",) * 3, 1, None)]
    # Without exploration, history is not gathered.
    plain = await manager.start(GenerationParams(prompt="a circle", num_images=2, seed=1), {})
    one = await _round_done(manager, plain, 1)
    await manager.feedback(plain, [one.images[0].image.id], [])
    await _round_done(manager, plain, 2)
    assert upstream.histories[2] == []
    with pytest.raises(InvalidArgument, match=r"weights\.explore must be in \[0, 1\]"):
        await manager.start(GenerationParams(prompt="a circle"), {"explore": 1.5})


async def test_events_arrive_in_order_with_previews_before_images(manager: SessionManager,
                                                                 upstream: ScriptedUpstream) -> None:
    upstream.output_gate = asyncio.Event()  # images held back, so the reader below follows the round live
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=2, seed=1), {})
    live = asyncio.create_task(_events_until_round(manager, sid, 1))
    await asyncio.sleep(0.2)
    upstream.output_gate.set()
    kinds = [e.WhichOneof("event") for e in await live]
    assert kinds == ["round_started", "progress", "preview", "progress", "round_images"]
    # Once the round has ended its previews and ticks leave the stream: a late reader replays the rest.
    kinds = [e.WhichOneof("event") for e in await _events_until_round(manager, sid, 1)]
    assert kinds == ["round_started", "round_images"]


async def test_feedback_accumulates_and_a_like_overrides_an_earlier_dislike(manager: SessionManager,
                                                                            upstream: ScriptedUpstream) -> None:
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=2, seed=5), {})
    r1 = await _round_done(manager, sid, 1)
    a, b = r1.images[0].image.id, r1.images[1].image.id
    await manager.feedback(sid, [], [a])
    await _round_done(manager, sid, 2)
    await manager.feedback(sid, [a, b], [])
    await _round_done(manager, sid, 3)
    assert upstream.calls[2][1:3] == ([a, b], [])


async def test_a_round_conditions_on_the_most_recent_references_only(store: Store,
                                                                     upstream: ScriptedUpstream) -> None:
    manager = SessionManager(store, upstream, encode_event=codec.encode_event, ttl_s=600, max_references=2)
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=2, seed=5), {})
    liked = []
    for number in range(1, 4):
        r = await _round_done(manager, sid, number)
        liked.append(r.images[0].image.id)
        await manager.feedback(sid, [liked[-1]], [r.images[1].image.id])
    await _round_done(manager, sid, 4)
    assert upstream.calls[-1][1] == liked[-2:]  # the two most recent likes, oldest first
    assert len(upstream.calls[-1][2]) == 2
    assert (await manager.snapshot(sid)).liked == tuple(liked)  # all are kept in the session
    await manager.close()


async def test_a_reroll_without_any_feedback_stays_a_plain_round(manager: SessionManager,
                                                                 upstream: ScriptedUpstream) -> None:
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    await _round_done(manager, sid, 1)
    await manager.feedback(sid, [], [])
    await _round_done(manager, sid, 2)
    assert [c[0] for c in upstream.calls] == ["plain", "plain"]


async def test_bad_feedback_is_refused_precisely(manager: SessionManager, store: Store) -> None:
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=2, seed=5), {})
    other = await manager.start(GenerationParams(prompt="a shape", num_images=2, seed=6), {})
    r1 = await _round_done(manager, sid, 1)
    foreign = (await _round_done(manager, other, 1)).images[0].image.id
    with pytest.raises(NotFound, match="no image 'nope'"):
        await manager.feedback(sid, ["nope"], [])
    with pytest.raises(InvalidArgument, match="belongs to another session"):
        await manager.feedback(sid, [foreign], [])
    with pytest.raises(InvalidArgument, match="both liked and disliked"):
        await manager.feedback(sid, [r1.images[0].image.id], [r1.images[0].image.id])
    with pytest.raises(InvalidArgument, match="0-8 ids"):
        await manager.feedback(sid, [r1.images[0].image.id] * 9, [])
    with pytest.raises(NotFound, match="no session"):
        await manager.feedback("ses_unknown", [], [])
    with pytest.raises(InvalidArgument, match="prompt is required"):
        await manager.start(GenerationParams(prompt="  "), {})
    with pytest.raises(InvalidArgument, match="diversity"):
        await manager.start(GenerationParams(prompt="a"), {"diversity": 1.5})
    with pytest.raises(InvalidArgument, match="start"):
        await manager.start(GenerationParams(prompt="a"), {"start": 0.9, "end": 0.1})
    # Nothing was changed by the refused messages.
    assert (await manager.snapshot(sid)).liked == ()


async def test_one_round_at_a_time(manager: SessionManager, upstream: ScriptedUpstream) -> None:
    upstream.gate = asyncio.Event()
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    with pytest.raises(FailedPrecondition, match="round 1 is running"):
        await manager.feedback(sid, [], [])
    upstream.gate.set()
    await _round_done(manager, sid, 1)


async def test_cancel_stops_the_running_round_and_ends_the_session(manager: SessionManager,
                                                                   upstream: ScriptedUpstream) -> None:
    upstream.gate = asyncio.Event()
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    await _events_until(manager, sid, "progress")
    await manager.cancel(sid)
    assert upstream.cancelled == 1
    events = await _events_until(manager, sid, "cancelled")
    assert events[-1].cancelled.reason == "client"
    assert (await manager.snapshot(sid)).phase is Phase.CANCELLED
    with pytest.raises(FailedPrecondition, match="has ended"):
        await manager.feedback(sid, [], [])
    await manager.cancel(sid)  # idempotent


async def test_a_failed_round_leaves_the_session_usable(manager: SessionManager, upstream: ScriptedUpstream) -> None:
    upstream.fail_next = InvalidArgument("steps must be 1-100", field="steps")
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    events = await _events_until(manager, sid, "error")
    assert events[-1].error.code == "INVALID_ARGUMENT" and events[-1].round == 1
    assert (await manager.snapshot(sid)).phase is Phase.AWAITING_FEEDBACK
    assert await manager.feedback(sid, [], []) == 1  # a failed round is run again under its number
    await _round_done(manager, sid, 1)
    assert [c[3] for c in upstream.calls] == [5, 5]  # with its seed


async def test_an_unavailable_replica_is_retried_once(manager: SessionManager, upstream: ScriptedUpstream) -> None:
    upstream.fail_next = Unavailable("generator: connection refused")
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    await _round_done(manager, sid, 1)
    assert len(upstream.calls) == 2


async def test_a_full_queue_is_waited_out(manager: SessionManager, upstream: ScriptedUpstream) -> None:
    upstream.full_for = 3
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    await _round_done(manager, sid, 1)
    assert len(upstream.calls) == 4 and upstream.full_for == 0


async def test_a_queue_that_stays_full_fails_the_round_in_the_end(manager: SessionManager, upstream: ScriptedUpstream,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions_module, "BUSY_WAIT_S", 0.1)
    upstream.full_for = 10_000
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    events = await _events_until(manager, sid, "error")
    assert events[-1].error.code == "RESOURCE_EXHAUSTED"
    assert (await manager.snapshot(sid)).phase is Phase.AWAITING_FEEDBACK


async def test_snapshot_then_follow_misses_nothing(manager: SessionManager, upstream: ScriptedUpstream) -> None:
    """What a resuming client does: the snapshot, then the events after the entry it reflects."""
    upstream.gate = asyncio.Event()
    sid = await manager.start(GenerationParams(prompt="a shape", num_images=2, seed=5), {})
    await _events_until(manager, sid, "progress")
    view = await manager.snapshot(sid)
    assert view.phase is Phase.GENERATING and view.running_round == 1 and view.rounds == ()
    upstream.gate.set()
    rest = await _events_until(manager, sid, "round_images", after=view.event_id)
    assert rest[0].WhichOneof("event") != "round_started"  # already reflected in the snapshot
    assert len(rest[-1].round_images.images) == 2


async def test_an_orphaned_round_is_failed_on_resume(store: Store, upstream: ScriptedUpstream) -> None:
    """A round whose gateway died (no task, no heartbeat) is reported failed, not left running."""
    upstream.gate = asyncio.Event()
    dead = SessionManager(store, upstream, encode_event=codec.encode_event, ttl_s=600)
    sid = await dead.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
    await _events_until(dead, sid, "progress")
    for task in list(dead._tasks.values()):
        task.cancel()  # the process is gone: nothing updates the store any more
    await asyncio.sleep(0.05)
    alive = SessionManager(store, upstream, encode_event=codec.encode_event, ttl_s=600, stale_after_s=0.0)
    view = await alive.snapshot(sid)
    assert view.phase is Phase.AWAITING_FEEDBACK
    events = await _events_until(alive, sid, "error")
    assert events[-1].error.code == "UNAVAILABLE"


async def test_a_round_over_the_generations_quota_waits_for_the_tenants_other_round(
        store: Store, upstream: ScriptedUpstream) -> None:
    """Two sessions of one tenant, one generation slot: the second round starts when the first ends."""
    quotas = Quotas(store, {GENERATIONS.name: 1, SESSIONS.name: 2})
    manager = SessionManager(store, upstream, encode_event=codec.encode_event, ttl_s=600, quotas=quotas)
    upstream.gate = asyncio.Event()
    try:
        with acting_as("acme"):
            first = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=5), {})
            await _events_until(manager, first, "progress")
            second = await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=6), {})
            with pytest.raises(ResourceExhausted, match="open sessions"):
                await manager.start(GenerationParams(prompt="a shape", num_images=1, seed=7), {})
        await asyncio.sleep(0.3)
        assert len(upstream.calls) == 1  # the second round waits for the slot, it does not fail
        upstream.gate.set()
        await _round_done(manager, first, 1)
        await _round_done(manager, second, 1)
        assert len(upstream.calls) == 2 and await quotas.in_use(GENERATIONS, "acme") == 0
        with acting_as("acme"):
            await manager.cancel(first)
            assert await quotas.in_use(SESSIONS, "acme") == 1
            kinds = [e.kind for e in (await manager.activity.page())[0]]
        assert kinds == ["session.cancelled", "session.started", "session.started"]
    finally:
        await manager.close()
