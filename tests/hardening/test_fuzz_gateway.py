"""Fuzzing the running gateway: random and mutated requests to every RPC must never get INTERNAL
(or UNKNOWN, or a crash), and the gateway must be healthy afterwards.

`serve("all")` runs in a thread of its own (in-process store, philip-tiny); hypothesis drives
a blocking client. `make test` runs PHILIP_FUZZ_EXAMPLES (default 120) examples; `make fuzz`
runs 1,000.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from philip.evals.personalize import reference_images
from philip.images import png_bytes
from philip.settings import Settings
from philip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, generator_pb2, personalizer_pb2, refiner_pb2
from services.app import serve
from tests.personalizer.conftest import MODEL, UPSCALER

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("PHILIP_FUZZ_EXAMPLES", "120"))
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED}
CALL_TIMEOUT_S = 4.0
PNG = png_bytes(reference_images(1)[0])


@dataclass
class Served:
    stub: gateway_pb2_grpc.GatewayStub
    channel: grpc.Channel
    address: str
    codes: dict[str, int]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings_ = Settings(model_dir=str(MODEL), upscaler_path=str(UPSCALER), port=0, http_port=0, threads=1, max_queue=4,
                         adapters_dir=str(tmp_path_factory.mktemp("adapters")), grace_s=1.0, blob_ttl_s=120)
    loop = asyncio.new_event_loop()
    ready: dict[str, str] = {}
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        await serve("all", settings_, stop=stop, on_ready=lambda a: (ready.update(a), started.set()))

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(120), "serve(all) did not start"
    channel = grpc.insecure_channel(ready["gateway"], options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        yield Served(gateway_pb2_grpc.GatewayStub(channel), channel, ready["gateway"], {})
    finally:
        channel.close()
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)


# ---- strategies ----------------------------------------------------------------------------------

texts = st.one_of(st.text(max_size=40), st.text(max_size=1200), st.sampled_from(["", " ", "a red circle", "\x00",
                                                                                   "sks", "ad_0123456789abcdef"]))
ids = st.one_of(texts, st.sampled_from(["img_0", "ses_0", "tj_0000000000000000", "ad_00000000000000ff", "../x"]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 1.0, 5.0, 30.5]))
small = st.integers(min_value=0, max_value=12)
uint32 = st.one_of(small, st.integers(min_value=0, max_value=2**32 - 1))


@st.composite
def params(draw: st.DrawFn) -> common_pb2.GenerationParams:
    p = common_pb2.GenerationParams(
        prompt=draw(texts), negative_prompt=draw(texts), num_images=draw(st.integers(0, 12)),
        width=draw(st.sampled_from([0, 0, 8, 12, 64, 1024, 4096, 2**32 - 1])),
        height=draw(st.sampled_from([0, 0, 8, 64, 1000, 2**31])), aspect_ratio=draw(st.integers(0, 9)),
        steps=draw(st.sampled_from([0, 1, 2, 3, 101, 2**32 - 1])), scheduler=draw(st.sampled_from(
            ["", "dpm++", "euler", "lcm", "heun", "\u2603"])), preview_every=draw(st.sampled_from([0, 1, 2, 500])),
        style=draw(st.sampled_from(["", "flat", "baroque"])), adapter_ids=draw(st.lists(ids, max_size=6)),
        preview_mode=draw(st.integers(0, 4)))
    if draw(st.booleans()):
        p.guidance = draw(floats)
    if draw(st.booleans()):
        p.seed = draw(st.integers(0, 2**64 - 1))
    return p


def _mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


image_bytes = st.one_of(
    st.just(PNG), st.binary(max_size=200),
    st.builds(_mutate, st.just(PNG), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)),
    st.just(PNG[: len(PNG) // 2]),
)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def weights() -> st.SearchStrategy[refiner_pb2.FeedbackWeights]:
    return st.builds(lambda vals: refiner_pb2.FeedbackWeights(**vals), st.dictionaries(
        st.sampled_from(["start", "end", "min_weight", "max_weight", "neg_scale", "diversity"]), floats, max_size=6))


# ---- calls ---------------------------------------------------------------------------------------


def _generate(stub: gateway_pb2_grpc.GatewayStub, p: common_pb2.GenerationParams, cancel: bool) -> None:
    def messages() -> Iterator[generator_pb2.GenerateClientMessage]:
        yield generator_pb2.GenerateClientMessage(start=generator_pb2.GenerateStart(params=p))
        if cancel:
            yield generator_pb2.GenerateClientMessage(cancel=generator_pb2.CancelGeneration())

    for _ in stub.Generate(messages(), timeout=CALL_TIMEOUT_S):
        pass


def _session(stub: gateway_pb2_grpc.GatewayStub, first: gateway_pb2.SessionClientMessage,
             later: list[gateway_pb2.SessionClientMessage]) -> None:
    call = stub.Session(iter([first, *later]), timeout=CALL_TIMEOUT_S)
    for _ in call:
        pass


session_messages = st.one_of(
    st.builds(lambda ids_, dis, prompt: gateway_pb2.SessionClientMessage(feedback=gateway_pb2.SessionFeedback(
        liked_image_ids=ids_, disliked_image_ids=dis, **({} if prompt is None else {"prompt": prompt}))),
        st.lists(ids, max_size=10), st.lists(ids, max_size=10), st.none() | texts),
    st.builds(lambda i, s: gateway_pb2.SessionClientMessage(finalize=gateway_pb2.SessionFinalize(image_id=i, scale=s)),
              ids, uint32),
    st.just(gateway_pb2.SessionClientMessage(cancel=gateway_pb2.SessionCancel())),
    st.builds(lambda i: gateway_pb2.SessionClientMessage(resume=gateway_pb2.SessionResume(session_id=i)), ids),
)
first_messages = st.one_of(
    st.builds(lambda p, w: gateway_pb2.SessionClientMessage(start=gateway_pb2.SessionStart(params=p, weights=w)),
              params(), weights()),
    session_messages,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["generate", "session", "subscribe", "get", "create", "adapter", "job", "activity"]))
    if kind == "generate":
        return kind, (draw(params()), draw(st.booleans()))
    if kind == "session":
        return kind, (draw(first_messages), draw(st.lists(session_messages, max_size=3)))
    if kind == "subscribe":
        target = draw(st.sampled_from(["session_id", "job_id", None]))
        return kind, gateway_pb2.SubscribeRequest(**({target: draw(ids)} if target else {}))
    if kind == "get":
        return kind, (draw(st.booleans()), draw(ids))
    if kind == "create":
        images = draw(st.lists(image_bytes, min_size=0, max_size=9))
        if draw(st.integers(0, 20)) == 0:
            images = [_bomb(), *images]
        return kind, personalizer_pb2.CreateAdapterRequest(
            reference_images=images, token=draw(st.one_of(texts, st.sampled_from(["sks", "red", "zz"]))),
            class_word=draw(texts), method=draw(st.integers(0, 5)), steps=draw(st.sampled_from([0, 1, 2, 5001])),
            rank=draw(st.sampled_from([0, 1, 65, 2**32 - 1])))
    if kind == "adapter":
        return kind, (draw(st.sampled_from(["get", "delete", "list"])), draw(ids))
    if kind == "activity":
        return kind, gateway_pb2.ListActivityRequest(page_size=draw(st.integers(-(2**31), 2**31 - 1)),
                                                     page_token=draw(st.one_of(ids, st.just("0-1"))))
    return kind, (draw(st.sampled_from(["get", "cancel", "watch"])), draw(ids))


def call(stub: gateway_pb2_grpc.GatewayStub, kind: str, payload: Any) -> None:
    if kind == "generate":
        _generate(stub, *payload)
    elif kind == "session":
        _session(stub, *payload)
    elif kind == "subscribe":
        for _ in stub.Subscribe(payload, timeout=CALL_TIMEOUT_S):
            pass
    elif kind == "get":
        session, target = payload
        if session:
            stub.GetSession(gateway_pb2.GetSessionRequest(session_id=target), timeout=CALL_TIMEOUT_S)
        else:
            stub.GetJob(generator_pb2.GetJobRequest(job_id=target), timeout=CALL_TIMEOUT_S)
    elif kind == "create":
        job = stub.CreateAdapter(payload, timeout=CALL_TIMEOUT_S)
        stub.CancelJob(personalizer_pb2.CancelJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT_S)  # keep CPU free
    elif kind == "activity":
        stub.ListActivity(payload, timeout=CALL_TIMEOUT_S)
    elif kind == "adapter":
        op, target = payload
        if op == "get":
            stub.GetAdapter(personalizer_pb2.GetAdapterRequest(adapter_id=target), timeout=CALL_TIMEOUT_S)
        elif op == "delete":
            stub.DeleteAdapter(personalizer_pb2.DeleteAdapterRequest(adapter_id=target), timeout=CALL_TIMEOUT_S)
        else:
            stub.ListAdapters(personalizer_pb2.ListAdaptersRequest(), timeout=CALL_TIMEOUT_S)
    else:
        op, target = payload
        request = personalizer_pb2.WatchJobRequest(job_id=target)
        if op == "get":
            stub.GetTrainingJob(request, timeout=CALL_TIMEOUT_S)
        elif op == "cancel":
            stub.CancelJob(personalizer_pb2.CancelJobRequest(job_id=target), timeout=CALL_TIMEOUT_S)
        else:
            for _ in stub.WatchJob(request, timeout=CALL_TIMEOUT_S):
                pass


def test_random_and_mutated_requests_never_get_internal(served: Served) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests())
    def one(request: tuple[str, Any]) -> None:
        kind, payload = request
        try:
            call(served.stub, kind, payload)
            code = "OK"
        except grpc.RpcError as exc:
            status = exc.code()  # type: ignore[attr-defined]
            assert status not in BAD_CODES, f"{kind}: {status.name} {exc.details()}"  # type: ignore[attr-defined]
            code = status.name
        served.codes[f"{kind}:{code}"] = served.codes.get(f"{kind}:{code}", 0) + 1

    one()
    reply = health_pb2_grpc.HealthStub(served.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The fuzz reached past validation too: some calls succeeded, and most failed precisely.
    assert sum(n for k, n in served.codes.items() if k.endswith(":OK")) > 0, served.codes
    assert sum(n for k, n in served.codes.items() if "INVALID_ARGUMENT" in k) > EXAMPLES // 10, served.codes
