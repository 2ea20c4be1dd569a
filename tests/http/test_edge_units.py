"""The HTTP edge's pieces without a server: the gRPC status -> HTTP table of errors.py (Retry-After on
429/503) and protojson's parsing (field names of BadRequest, snake_case accepted, defaults printed)."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio

from philip.rpc import errors
from philip.rpc.errors import InvalidArgument, PhilipError
from philip.rpc.status import DETAILS_KEY
from philip.store.base import StoreError, StoreUnavailable
from philip.v1 import common_pb2, gateway_pb2, generator_pb2
from services.gateway.http.errors import HTTP_STATUS, error_response, status_of
from services.gateway.http.idempotency import KeyReused
from services.gateway.http.protojson import MAX_JSON_BYTES, PayloadTooLarge, dumps, parse, to_json

# docs/HTTP.md's table, written out again on purpose: the code's table must match the contract.
CONTRACT = {
    "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 409, "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
}
OTHERS = ("INTERNAL", "DATA_LOSS")  # "anything else": 500 (UNKNOWN from an upstream is UNAVAILABLE, below)


def body_of(response: object) -> dict[str, object]:
    data = json.loads(bytes(response.body))  # type: ignore[attr-defined]
    assert isinstance(data["code"], int) and isinstance(data["message"], str), data
    return data  # type: ignore[no-any-return]


def domain_error(code: str, retry_after_s: float | None = None) -> PhilipError:
    cls = type(f"Err{code}", (PhilipError,), {"code": code})
    return cls(f"a {code} error", retry_after_s=retry_after_s)


def test_the_table_is_the_contract() -> None:
    assert {k: v for k, v in HTTP_STATUS.items() if k != "OK"} == CONTRACT


@pytest.mark.parametrize("code", [*CONTRACT, *OTHERS])
def test_each_domain_error_maps_to_its_http_status(code: str) -> None:
    response = error_response(domain_error(code), "rid-1")
    assert response.status_code == CONTRACT.get(code, 500)
    body = body_of(response)
    assert body["code"] == getattr(code_pb2, code)
    assert body["message"] == f"a {code} error"
    assert response.media_type == "application/json"
    retry = response.headers.get("retry-after")
    if code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"):
        assert retry == "1"  # no RetryInfo: a default second
    else:
        assert retry is None


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_each_upstream_grpc_code_maps_to_its_http_status(code: grpc.StatusCode) -> None:
    exc = aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=f"upstream {code.name}")
    response = error_response(exc, "rid-2")
    if code == grpc.StatusCode.UNKNOWN:  # an upstream that failed without a status: unreachable to us
        assert response.status_code == 503 and body_of(response)["code"] == code_pb2.UNAVAILABLE
        assert response.headers["retry-after"] == "1"
        return
    assert response.status_code == CONTRACT.get(code.name, 500)
    assert body_of(response) == {"code": code.value[0], "message": f"upstream {code.name}"}
    assert ("retry-after" in response.headers) == (code.name in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"))


def test_upstream_rich_details_pass_through_with_their_retry_delay() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=30))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="quota of open sessions")
    status.details.add().Pack(retry)
    exc = aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, aio.Metadata(),
                          aio.Metadata((DETAILS_KEY, status.SerializeToString())), details="quota")
    response = error_response(exc, "rid")
    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    body = body_of(response)
    assert body["message"] == "quota of open sessions"
    assert body["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}]


@pytest.mark.parametrize(("delay", "header"), [(0.2, "1"), (1.0, "1"), (2.5, "3"), (30.0, "30")])
def test_retry_after_is_whole_seconds_rounded_up(delay: float, header: str) -> None:
    for err in (errors.ResourceExhausted("full", retry_after_s=delay), errors.Unavailable("down", retry_after_s=delay)):
        response = error_response(err, "rid")
        assert response.headers["retry-after"] == header
        retry_info = [d for d in body_of(response)["details"] if d["@type"].endswith("RetryInfo")]  # type: ignore
        assert len(retry_info) == 1


def test_edge_only_errors_name_their_own_status() -> None:
    too_large = error_response(PayloadTooLarge(f"over the limit of {MAX_JSON_BYTES} bytes"), "rid")
    assert too_large.status_code == 413 and "retry-after" not in too_large.headers
    assert str(MAX_JSON_BYTES) in body_of(too_large)["message"]  # type: ignore[operator]
    reused = error_response(KeyReused("another body", field="Idempotency-Key"), "rid")
    assert reused.status_code == 422 and body_of(reused)["code"] == code_pb2.INVALID_ARGUMENT
    running = error_response(errors.FailedPrecondition("still running", retry_after_s=1.0), "rid")
    assert running.status_code == 409 and running.headers["retry-after"] == "1"


def test_bugs_are_500_with_only_the_request_id_and_the_store_down_is_503() -> None:
    bug = error_response(RuntimeError("secret internals"), "rid-42")
    assert bug.status_code == 500
    assert body_of(bug) == {"code": code_pb2.INTERNAL, "message": "internal error (request id rid-42)"}
    assert error_response(StoreError("a backend failure"), "rid").status_code == 500
    down = error_response(StoreUnavailable("connection refused"), "rid")
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert "store unavailable" in body_of(down)["message"]  # type: ignore[operator]


def test_bad_request_details_name_the_field() -> None:
    status = status_of(InvalidArgument("prompt is required", field="params.prompt"), "rid")
    details = json.loads(bytes(error_response(InvalidArgument("x", field="params.prompt"), "rid").body))["details"]
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert {"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "params.prompt", "description": "x"}]} in details
    assert any(d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" and d["reason"] == "InvalidArgument"
               for d in details)


# ---- protojson ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"params": {"prompt": 5}}, "params.prompt"),
    ({"params": {"numImages": -1}}, "params.numImages"),
    ({"params": {"numImages": 1.5}}, "params.numImages"),
    ({"params": {"seed": "abc"}}, "params.seed"),
    ({"params": {"guidance": "x"}}, "params.guidance"),
    ({"params": {"guidance": 1e40}}, "params.guidance"),
    ({"params": {"aspectRatio": "ROUND"}}, "params.aspectRatio"),
    ({"params": {"adapterIds": "ad_1"}}, "params.adapterIds"),
    ({"params": {"adapterIds": [1]}}, "params.adapterIds"),
    ({"params": {"bogus": 1}}, "params.bogus"),
    ({"weights": {"start": "x"}}, "weights.start"),
    ({"nope": 1}, "nope"),
])
def test_parse_names_the_offending_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(json.dumps(body).encode(), gateway_pb2.SessionStart)
    assert caught.value.field == field, caught.value.message
    assert caught.value.message.startswith("not a SessionStart: ")


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"nan", b"[1, 2]", b'"text"', b"3"])
def test_parse_refuses_what_is_not_a_json_object(raw: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(raw, gateway_pb2.SessionStart)
    assert caught.value.field == "body"


def test_parse_takes_camel_and_snake_case_and_an_empty_body() -> None:
    camel = parse(b'{"params": {"prompt": "a cat", "numImages": 2, "previewEvery": 1, "seed": "7"}}',
                  gateway_pb2.SessionStart)
    snake = parse(b'{"params": {"prompt": "a cat", "num_images": 2, "preview_every": 1, "seed": 7}}',
                  gateway_pb2.SessionStart)
    assert camel == snake
    assert camel.params.num_images == 2 and camel.params.seed == 7 and camel.params.HasField("seed")
    assert parse(b"", gateway_pb2.SessionCancel) == gateway_pb2.SessionCancel()
    assert parse(b"  \n", gateway_pb2.SessionFeedback) == gateway_pb2.SessionFeedback()
    feedback = parse(b'{"likedImageIds": ["img_a"], "prompt": ""}', gateway_pb2.SessionFeedback)
    assert feedback.HasField("prompt") and list(feedback.liked_image_ids) == ["img_a"]


def test_answers_print_every_field_in_canonical_json() -> None:
    job = generator_pb2.Job(job_id="job_1", created_ms=1712345678901,
                            params=common_pb2.GenerationParams(prompt="a cat", seed=2**63))
    printed = to_json(job)
    assert printed["jobId"] == "job_1" and printed["createdMs"] == "1712345678901"  # int64 as a string
    assert printed["state"] == "JOB_STATE_UNSPECIFIED" and printed["images"] == [] and printed["step"] == 0
    assert printed["params"]["seed"] == str(2**63) and printed["params"]["numImages"] == 0
    assert "guidance" not in printed["params"]  # optional, unset: absent, not a default
    assert json.loads(dumps(job)) == printed
