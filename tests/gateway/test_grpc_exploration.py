"""What a session learns and is told, over real gRPC: the model's defaults, learned values, pins and bans, and
uploaded reference images (the same deployment as test_grpc_sessions.py, one for this module)."""

from __future__ import annotations

import re

import grpc
import pytest
from grpc import aio

from philip.v1 import common_pb2, gateway_pb2, refiner_pb2
from tests.gateway.grpc_sessions_support import (
    Deployment,
    Msg,
    _read_error,
    read_until,
    start,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_session_without_weights_explores_says_what_it_learned_and_honours_a_pin(
        deployment: Deployment) -> None:
    defaults = await deployment.refiner.GetDefaults(refiner_pb2.GetDefaultsRequest())
    assert (defaults.weights.explore, defaults.weights.max_weight, defaults.weights.min_weight) == (1.0, 0.0, 0.0)
    assert defaults.weights_source.endswith("philip-tiny/philip_defaults.json")
    assert [s.name for s in defaults.slots] == ["fg", "shape", "bg"]

    call = deployment.stub.Session()
    await call.write(start("a circle", None, seed=31, steps=4, preview_every=0))  # no weights: the model's defaults
    first = await read_until(call, "round_images", round_number=1)
    snapshot, round1 = first[0].snapshot, first[-1].round_images
    assert snapshot.weights.explore == 1.0 and snapshot.weights.max_weight == 0.0  # the effective weights
    assert snapshot.weights.HasField("diversity") and not round1.learned  # round 1: the person's prompt
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[round1.images[0].image.id],
                                                              disliked_image_ids=[round1.images[3].image.id])))
    round2 = (await read_until(call, "round_images", round_number=2))[-1].round_images
    assert all(re.fullmatch(r"a \w+ circle on a \w+ background", i.prompt) for i in round2.images)
    assert round2.compute.reference_image_evals == 0
    learned = {b.slot: [(v.value, v.probability) for v in b.values] for b in round2.learned}
    assert set(learned) == {"fg", "bg"}  # the prompt names the shape: nothing to learn there
    for values in learned.values():
        probabilities = [p for _, p in values]
        assert 1 <= len(values) <= 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1.0001

    # A bad pin is refused before it is stored (the call ends with the status); the session stays usable.
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(
        liked_image_ids=[round2.images[1].image.id],
        constraints=refiner_pb2.SlotConstraints(pinned=[refiner_pb2.SlotValue(slot="bg", value="teal")]))))
    with pytest.raises(aio.AioRpcError) as bad:
        await read_until(call, "round_started")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'teal' is not a value of 'bg'" in (bad.value.details() or "")
    call = deployment.stub.Session()
    await call.write(Msg(resume=gateway_pb2.SessionResume(session_id=first[0].session_id)))
    assert (await read_until(call, "snapshot"))[0].snapshot.phase == gateway_pb2.SESSION_PHASE_AWAITING_FEEDBACK
    pin = refiner_pb2.SlotConstraints(pinned=[refiner_pb2.SlotValue(slot="bg", value="blue")],
                                      banned=[refiner_pb2.SlotValue(slot="fg", value="red")])
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[round2.images[1].image.id],
                                                              constraints=pin)))
    round3 = (await read_until(call, "round_images", round_number=3))[-1].round_images
    assert all(re.fullmatch(r"a (?!red)\w+ circle on a blue background", i.prompt) for i in round3.images)
    assert {b.slot: b.values[0].value for b in round3.learned}["bg"] == "blue"
    session = await deployment.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=first[0].session_id))
    assert session.constraints == pin and list(session.learned) == list(round3.learned)
    assert list(session.rounds[1].learned) == list(round2.learned)
    # Feedback without constraints keeps them.
    await call.write(Msg(feedback=gateway_pb2.SessionFeedback(liked_image_ids=[round3.images[0].image.id])))
    round4 = (await read_until(call, "round_images", round_number=4))[-1].round_images
    assert all(i.prompt.endswith("on a blue background") for i in round4.images)
    await call.write(Msg(cancel=gateway_pb2.SessionCancel()))
    await call.done_writing()


async def test_uploaded_reference_images_condition_round_one_without_training(deployment: Deployment) -> None:
    from philip.evals.personalize import reference_images
    from philip.images import png_bytes

    refs = [png_bytes(img) for img in reference_images(5)]
    params = common_pb2.GenerationParams(prompt="a shape on a white background", num_images=2, steps=4, seed=41)
    call = deployment.stub.Session()
    await call.write(Msg(start=gateway_pb2.SessionStart(params=params, reference_images=refs)))
    events = await read_until(call, "round_images", round_number=1)
    snapshot, round1 = events[0].snapshot, events[-1].round_images
    # philip-tiny's reference defaults: FABRIC on at the paper's weights, no exploration.
    assert (snapshot.weights.explore, snapshot.weights.max_weight, snapshot.weights.min_weight) == (0.0,
                                                                                                     pytest.approx(0.8),
                                                                                                     pytest.approx(0.1))
    assert len(snapshot.liked_image_ids) == 5 and all(i.startswith("ref_") for i in snapshot.liked_image_ids)
    assert round1.compute.reference_image_evals > 0  # FABRIC attended to the uploads in round 1
    assert all(i.steered_from == "" for i in round1.images)  # an upload has no noise to steer from
    await call.write(Msg(cancel=gateway_pb2.SessionCancel()))
    await call.done_writing()

    for bad, message in (([b"not an image"], "reference_images[0]"), ([refs[0]] * 8, "0-7 images")):
        call = deployment.stub.Session()
        await call.write(Msg(start=gateway_pb2.SessionStart(params=params, reference_images=bad)))
        err = await _read_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (err.details() or "")
