"""Sessions end to end over real gRPC: client -> gateway -> generator + refiner, Redis, philip-tiny.

One ``serve("all")`` for the module, exactly as ``philip serve all`` runs, on the shipped model.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from PIL import Image

from philip.v1 import common_pb2, gateway_pb2, generator_pb2, refiner_pb2
from tests.gateway.grpc_sessions_support import (
    FABRIC,
    Deployment,
    Msg,
    _read_error,
    kinds,
    read_until,
    start,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_whole_session_likes_dislikes_and_upscales(deployment: Deployment) -> None:
    call = deployment.stub.Session()
    await call.write(start())
    first = await read_until(call, "round_images", round_number=1)
    assert kinds(first)[:2] == ["snapshot", "round_started"]
    assert {"progress", "preview"} <= set(kinds(first))
    session_id = first[0].session_id
    round1 = first[-1].round_images
    assert len(round1.images) == 4 and round1.compute.reference_image_evals == 0
    assert [i.image.seed for i in round1.images] == [11, 12, 13, 14]
    for image in round1.images:
        assert Image.open(io.BytesIO(image.image.png)).size == (64, 64)

    liked, disliked = round1.images[0].image.id, round1.images[1].image.id
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[liked],
                                                              disliked_image_ids=[disliked])))
    second = await read_until(call, "round_images", round_number=2)
    started = next(e.round_started for e in second if e.WhichOneof("event") == "round_started")
    assert (started.liked, started.disliked) == (1, 1)
    round2 = second[-1].round_images
    assert len(round2.images) == 4
    assert all(i.steered_from == liked for i in round2.images)  # noise steered from the liked image
    assert round2.compute.reference_image_evals > 0  # FABRIC's reference passes ran
    assert {i.image.id for i in round2.images}.isdisjoint({i.image.id for i in round1.images})

    chosen = round2.images[2].image.id
    await call.write(Msg(finalize=gateway_pb2.SessionFinalize(image_id=chosen)))
    last = await read_until(call, "final")
    assert "upscale_progress" in kinds(last)
    final = last[-1].final
    assert final.source_image_id == chosen and (final.image.width, final.image.height) == (256, 256)
    assert Image.open(io.BytesIO(final.image.png)).size == (256, 256)
    assert await call.read() is aio.EOF  # the session is over: the stream ends
    await call.done_writing()

    snap = await deployment.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
    assert snap.phase == gateway_pb2.SESSION_PHASE_DONE
    assert [r.round for r in snap.rounds] == [1, 2]
    assert list(snap.liked_image_ids) == [liked] and list(snap.disliked_image_ids) == [disliked]
    assert snap.chosen_image_id == chosen and snap.final.image.png == final.image.png

    # A late subscriber gets the whole session replayed, final image included, then the end.
    replay = [e.session async for e in deployment.stub.Subscribe(gateway_pb2.SubscribeRequest(session_id=session_id))]
    assert [e.round for e in replay if e.WhichOneof("event") == "round_images"] == [1, 2]
    assert replay[-1].WhichOneof("event") == "final" and replay[-1].final.image.png == final.image.png


async def test_prompt_exploration_asks_for_captions_from_the_choices(deployment: Deployment, tmp_path: Path) -> None:
    call = deployment.stub.Session()
    weights = refiner_pb2.FeedbackWeights(explore=0.5, max_weight=0.0, min_weight=0.0)
    params = common_pb2.GenerationParams(prompt="a circle", num_images=4, steps=4, seed=5)
    await call.write(Msg(start=gateway_pb2.SessionStart(params=params, weights=weights)))
    round1 = (await read_until(call, "round_images", round_number=1))[-1].round_images
    assert [i.prompt for i in round1.images] == ["a circle"] * 4
    # Nothing liked: exploration alone still sends round 2 to the refiner, which asks for 2 of 4 captions.
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(disliked_image_ids=[round1.images[3].image.id])))
    round2 = (await read_until(call, "round_images", round_number=2))[-1].round_images
    asked = [i.prompt for i in round2.images[:2]]
    assert all(re.fullmatch(r"a \w+ circle on a \w+ background", p) for p in asked) and len(set(asked)) == 2
    assert [i.prompt for i in round2.images[2:]] == ["a circle"] * 2
    assert round2.compute.reference_image_evals == 0  # FABRIC off: exploration costs no reference passes
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[round2.images[0].image.id],
                                                              disliked_image_ids=[round2.images[1].image.id])))
    round3 = (await read_until(call, "round_images", round_number=3))[-1].round_images
    assert all(re.fullmatch(r"a \w+ circle on a \w+ background", i.prompt) for i in round3.images[:2])
    await call.write(Msg(cancel=gateway_pb2.SessionCancel()))
    await call.done_writing()

    # `philip session --explore 0.5` says which caption each image of an exploring round was drawn from.
    from philip.clients.session import SessionClient
    from philip.clients.session_cli import run_session

    said: list[str] = []
    session = await SessionClient.start(deployment.stub, params, weights=weights)
    await run_session(session, out_dir=tmp_path, rounds=2, likes=["1"], dislikes=["2"], finalize="1", scale=0,
                      ask=None, say=said.append)
    await session.close()
    captions = [line for line in said if re.match(r"  \d: ", line)]  # round 1 is all "a circle": no lines
    assert len(captions) == 4 and captions[2:] == ["  3: a circle", "  4: a circle"]
    learned = [line for line in said if line.startswith("  learned: ")]  # under round 2's sheet
    assert len(learned) == 1 and re.fullmatch(r"  learned: fg: (\w+ [01]\.\d\d(, )?){1,3} \| bg: .+", learned[0])
    assert re.fullmatch(r"  1: a \w+ circle on a \w+ background", captions[0])


async def test_a_client_that_lost_its_connection_resumes(deployment: Deployment) -> None:
    first = deployment.stub.Session()
    await first.write(start(seed=21, num_images=2))
    events = await read_until(first, "round_images", round_number=1)
    session_id = events[0].session_id
    first.cancel()  # the connection drops

    second = deployment.stub.Session()
    await second.write(Msg(resume=gateway_pb2.SessionResume(session_id=session_id)))
    snapshot = (await read_until(second, "snapshot"))[0].snapshot
    assert snapshot.phase == gateway_pb2.SESSION_PHASE_AWAITING_FEEDBACK
    assert [i.image.id for i in snapshot.rounds[0].images] == [i.image.id for i in events[-1].round_images.images]
    await second.write(Msg(feedback=gateway_pb2.SessionFeedback(
        liked_image_ids=[snapshot.rounds[0].images[1].image.id])))
    round2 = (await read_until(second, "round_images", round_number=2))[-1].round_images
    assert len(round2.images) == 2
    await second.write(Msg(cancel=gateway_pb2.SessionCancel()))
    assert (await read_until(second, "cancelled"))[-1].cancelled.reason == "client"


async def test_a_slow_subscriber_never_stalls_the_session(deployment: Deployment) -> None:
    call = deployment.stub.Session()
    await call.write(start(seed=31, steps=8, preview_every=1))
    session_id = (await read_until(call, "snapshot"))[0].session_id
    slow = deployment.stub.Subscribe(gateway_pb2.SubscribeRequest(session_id=session_id))
    fast = deployment.stub.Subscribe(gateway_pb2.SubscribeRequest(session_id=session_id))
    fast_events = [e.session async for e in _until_round(fast, 1)]  # `slow` reads nothing meanwhile
    round1 = (await read_until(call, "round_images", round_number=1))[-1].round_images
    assert fast_events[-1].round_images == round1
    await call.write(Msg(cancel=gateway_pb2.SessionCancel()))
    await read_until(call, "cancelled")
    slow_events = [e.session async for e in slow]  # whatever was dropped, results and the end arrive
    assert [e.round_images for e in slow_events if e.WhichOneof("event") == "round_images"] == [round1]
    assert slow_events[-1].WhichOneof("event") == "cancelled"


async def _until_round(stream: Any, number: int) -> AsyncIterator[gateway_pb2.SubscribeEvent]:
    async for event in stream:
        yield event
        if event.session.WhichOneof("event") == "round_images" and event.session.round == number:
            stream.cancel()
            return


async def test_cancel_frees_the_generator_within_a_step(deployment: Deployment) -> None:
    call = deployment.stub.Session()
    await call.write(start(seed=41, num_images=8, steps=100, preview_every=0))
    await read_until(call, "progress")
    t0 = time.monotonic()
    await call.write(Msg(cancel=gateway_pb2.SessionCancel()))
    events = await read_until(call, "cancelled", timeout=20)
    cancelled_after = time.monotonic() - t0
    assert sum(k == "round_images" for k in kinds(events)) == 0
    # The generator is free: a fresh one-step job starts and finishes at once.
    t1 = time.monotonic()
    gen = deployment.stub.Generate()
    await gen.write(generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(
        params=common_pb2.GenerationParams(prompt="a circle", num_images=1, steps=1, seed=1))))
    await gen.done_writing()
    got = [e.WhichOneof("event") async for e in gen]
    assert got[-1] == "result"
    # A 100-step round of 8 images takes far longer; the cancel must land within a step or two.
    assert cancelled_after < 5.0 and time.monotonic() - t1 < 5.0, (cancelled_after, time.monotonic() - t1)


async def _session_error(deployment: Deployment, *messages: Msg) -> aio.AioRpcError:
    call = deployment.stub.Session()
    for message in messages:
        await call.write(message)
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in call:
            pass
    return info.value


async def test_unknown_and_foreign_ids_are_refused_precisely(deployment: Deployment) -> None:
    err = await _session_error(deployment, Msg(resume=gateway_pb2.SessionResume(session_id="ses_nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "ses_nope" in (err.details() or "")
    err = await _session_error(deployment, Msg(feedback=gateway_pb2.SessionFeedback()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "start" in (err.details() or "")
    err = await _session_error(deployment, start(prompt=""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in (err.details() or "")

    with pytest.raises(aio.AioRpcError) as info:
        await deployment.stub.GetSession(gateway_pb2.GetSessionRequest(session_id="ses_nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in deployment.stub.Subscribe(gateway_pb2.SubscribeRequest(job_id="job_nope")):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    a = deployment.stub.Session()
    await a.write(start(seed=51, num_images=1, steps=2))
    foreign = (await read_until(a, "round_images"))[-1].round_images.images[0].image.id
    b = deployment.stub.Session()
    await b.write(start(seed=52, num_images=1, steps=2))
    await read_until(b, "round_images")
    await b.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[foreign])))
    err = await _read_error(b)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "another session" in (err.details() or "")
    await a.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=["img_missing"])))
    err = await _read_error(a)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "img_missing" in (err.details() or "")


async def test_the_refiner_rejects_bad_references_and_scales(deployment: Deployment) -> None:
    bad = refiner_pb2.FeedbackImage(image=common_pb2.Image(id="x", png=b"\xff\xd8\xff not a png"))
    request = refiner_pb2.RefineRequest(params=common_pb2.GenerationParams(prompt="a circle", steps=2),
                                        liked=[bad])
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in deployment.refiner.Refine(request):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "liked[0]" in (info.value.details() or "") and "JPEG" in (info.value.details() or "")

    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(png, format="PNG")
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in deployment.refiner.Upscale(refiner_pb2.UpscaleRequest(
                image=common_pb2.Image(png=png.getvalue()), scale=2)):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "x4" in (info.value.details() or "")
    events = [e async for e in deployment.refiner.Upscale(refiner_pb2.UpscaleRequest(
        image=common_pb2.Image(png=png.getvalue())))]
    assert (events[-1].image.width, events[-1].image.height) == (64, 64)


async def test_a_scripted_cli_session_runs_two_feedback_rounds(deployment: Deployment, tmp_path: Path) -> None:
    """What `philip session PROMPT --like 1 --dislike 2 --like 2 --dislike 4 --rounds 3` does."""
    from philip.clients.session import SessionClient
    from philip.clients.session_cli import run_session

    said: list[str] = []
    session = await SessionClient.start(deployment.stub, start(seed=61).start.params, weights=FABRIC)
    final = await run_session(session, out_dir=tmp_path, rounds=3, likes=["1", "2"], dislikes=["2", "4"],
                              finalize="best", scale=0, ask=None, say=said.append)
    await session.close()
    assert final is not None and Image.open(final).size == (256, 256)
    assert [r.number for r in session.rounds] == [1, 2, 3]
    assert [sum(1 for i in r.images if i.steered_from) for r in session.rounds] == [0, 4, 4]
    assert session.rounds[2].compute.reference_image_evals > session.rounds[1].compute.reference_image_evals
    assert sorted(p.name for p in tmp_path.glob("*_round*.png")) == [
        f"{session.session_id}_round{r}.png" for r in (1, 2, 3)]
    snap = await deployment.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session.session_id))
    ids = [[i.image.id for i in r.images] for r in snap.rounds]
    assert list(snap.liked_image_ids) == [ids[0][0], ids[1][1]]
    assert list(snap.disliked_image_ids) == [ids[0][1], ids[1][3]]
    assert snap.chosen_image_id == ids[2][0]  # best: nothing liked in the last round, so image 1


async def test_the_cli_resumes_a_dropped_session_where_it_stood(deployment: Deployment, tmp_path: Path) -> None:
    """What `philip session --resume ID` does: continue from the last round, and later just fetch the final."""
    from philip.clients.session import Round, SessionClient, SessionError
    from philip.clients.session_cli import resume_point, run_session

    first = await SessionClient.start(deployment.stub, start(seed=71, num_images=2).start.params)
    round1 = await first.next_round()
    await first.close()  # the connection drops while the person looks at round 1

    said: list[str] = []
    again = await SessionClient.resume(deployment.stub, first.session_id)
    point = await resume_point(again, tmp_path, said.append)
    assert isinstance(point, Round) and point.number == 1
    assert [i.image.id for i in point.images] == [i.image.id for i in round1.images]
    final = await run_session(again, out_dir=tmp_path, rounds=2, likes=["2"], dislikes=["1"], finalize="best",
                              scale=0, ask=None, say=said.append, current=point)
    await again.close()
    assert final is not None and Image.open(final).size == (256, 256)
    assert [r.number for r in again.rounds] == [2]
    snap = await deployment.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=first.session_id))
    assert list(snap.liked_image_ids) == [round1.images[1].image.id]

    done = await SessionClient.resume(deployment.stub, first.session_id)
    final.unlink()
    assert await resume_point(done, tmp_path, said.append) == final and Image.open(final).size == (256, 256)
    await done.close()

    cancelled = await SessionClient.start(deployment.stub, start(seed=72, num_images=1).start.params)
    await cancelled.next_round()
    await cancelled.cancel()
    await cancelled.close()
    gone = await SessionClient.resume(deployment.stub, cancelled.session_id)
    with pytest.raises(SessionError, match=r"FAILED_PRECONDITION: .* was cancelled; start a new one"):
        await resume_point(gone, tmp_path, said.append)
    await gone.close()


async def test_the_feedback_evaluation_runs_its_protocol(deployment: Deployment) -> None:
    from philip.evals.feedback import FeedbackConfig, run_trials, summarize

    cfg = FeedbackConfig(trials=2, rounds=2, cap=8, steps=4, seed=3)
    results = await run_trials(deployment.stub, cfg)
    out = summarize(results, cfg, 1.0)
    assert out["trials"] == 2 and len(out["match_rate_by_round"]) == 2
    # The counts behind the rates: 2 trials x 4 images a round.
    assert out["matches_by_round"] == [round(r * 8) for r in out["match_rate_by_round"]]
    low, high = out["last_round_rate_interval"]
    assert low <= out["match_rate_by_round"][-1] <= high
    for r in results:
        assert 1 <= r.feedback_images_to_match <= 9 and 1 <= r.reroll_images_to_match <= 9
        assert r.feedback_compute > 0 and r.reroll_compute > 0
    assert list(out)[-6:] == ["match_rate_by_round", "baseline_match_rate", "images_to_first_match_feedback",
                              "images_to_first_match_reroll", "compute_ratio", "trials"]
