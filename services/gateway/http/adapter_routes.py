"""HTTP routes of personalization: the personalizer's own RPCs, with multipart uploads of the photos."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.message import Message
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from philip.rpc.errors import InvalidArgument
from philip.v1 import personalizer_pb2
from services.gateway.fanout import buffered
from services.gateway.http.api import UPSTREAM_TIMEOUT_S, ApiRoute, EdgeState, last_event_id, request_id
from services.gateway.http.protojson import PayloadTooLarge, ProtoResponse, parse, read_body
from services.gateway.http.sse import event_frames, sse_response
from services.gateway.upstream import metadata

MAX_PHOTOS = 7  # the personalizer checks 4-7; more parts than this are refused before they are read
SUBSCRIBER_BUFFER = 16
_METHODS = {"": 0, "LORA": 1, "ADAPTER_METHOD_LORA": 1, "TEXTUAL_INVERSION": 2, "ADAPTER_METHOD_TEXTUAL_INVERSION": 2}
_DROPPABLE = frozenset({"progress", "preview"})


class _AdapterRoutes:
    """The handlers of ``adapter_routes``: plain methods over the edge's domain objects."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state
        self.core = state.core

    async def call(self, method: str, message: Message) -> Message:
        reply: Message = await getattr(self.core.personalization(), method)(message, timeout=UPSTREAM_TIMEOUT_S,
                                                                         metadata=metadata())
        return reply

    async def create(self, request: Request) -> Response:
        body = await read_body(request, self.state.max_upload_bytes)

        async def work() -> Response:
            job = await self.call("CreateAdapter", await _create_request(request, body))
            return ProtoResponse(job, 202, {"Location": f"/v1/training-jobs/{job.job_id}"})  # type: ignore[attr-defined]

        return await self.state.idempotency.run(request.headers.get("idempotency-key"), "adapters", body, work)

    async def list_adapters(self, request: Request) -> Response:
        return ProtoResponse(await self.call("ListAdapters", personalizer_pb2.ListAdaptersRequest()))

    async def get_adapter(self, request: Request) -> Response:
        adapter_id = request.path_params["adapter_id"]
        return ProtoResponse(await self.call("GetAdapter", personalizer_pb2.GetAdapterRequest(adapter_id=adapter_id)))

    async def delete_adapter(self, request: Request) -> Response:
        adapter_id = request.path_params["adapter_id"]
        request_pb = personalizer_pb2.DeleteAdapterRequest(adapter_id=adapter_id)
        return ProtoResponse(await self.call("DeleteAdapter", request_pb))

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return ProtoResponse(await self.call("GetTrainingJob", personalizer_pb2.WatchJobRequest(job_id=job_id)))

    async def cancel_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        parse(await read_body(request), personalizer_pb2.CancelJobRequest)
        return ProtoResponse(await self.call("CancelJob", personalizer_pb2.CancelJobRequest(job_id=job_id)))

    async def events(self, request: Request) -> Response:
        job_id, after = request.path_params["job_id"], int(last_event_id(request, stream_ids=False))
        await self.call("GetTrainingJob", personalizer_pb2.WatchJobRequest(job_id=job_id))  # a 404 now, not mid-stream

        async def watched() -> AsyncIterator[tuple[int, personalizer_pb2.TrainingEvent]]:
            # WatchJob replays the job's events in order: event n is the n-th of the replay.
            stream = self.core.personalization().WatchJob(personalizer_pb2.WatchJobRequest(job_id=job_id),
                                                     metadata=metadata())
            try:
                number = 0
                async for event in stream:
                    number += 1
                    if number > after:
                        yield number, event
            finally:
                stream.cancel()

        async def items() -> AsyncIterator[tuple[str, Message]]:
            async for number, event in buffered(watched(), lambda e: e[1].WhichOneof("event") in _DROPPABLE,
                                                SUBSCRIBER_BUFFER):
                yield str(number), event

        return sse_response(event_frames(items(), closing=self.state.closing, request_id=request_id(request)),
                            self.core.open_stream())



def adapter_routes(state: EdgeState) -> list[ApiRoute]:
    r = _AdapterRoutes(state)
    one = "/v1/adapters/{adapter_id}"
    job = "/v1/training-jobs/{job_id}"
    return [
        ApiRoute("POST", "/v1/adapters", r.create, "Train an adapter from 4-7 photos of a subject", "adapters",
                 personalizer_pb2.CreateAdapterRequest, personalizer_pb2.TrainingJob, 202, kind="multipart",
                 idempotent_create=True, errors=(400, 401, 409, 413, 429, 503)),
        ApiRoute("GET", "/v1/adapters", r.list_adapters, "The tenant's adapters, newest first", "adapters",
                 None, personalizer_pb2.ListAdaptersResponse),
        ApiRoute("GET", one, r.get_adapter, "One adapter", "adapters", None, personalizer_pb2.Adapter),
        ApiRoute("DELETE", one, r.delete_adapter, "Delete an adapter (its token is free again)", "adapters",
                 None, personalizer_pb2.DeleteAdapterResponse),
        ApiRoute("GET", job, r.get_job, "A training job's state", "adapters", None, personalizer_pb2.TrainingJob),
        ApiRoute("POST", f"{job}/cancel", r.cancel_job, "Cancel a training job", "adapters",
                 personalizer_pb2.CancelJobRequest, personalizer_pb2.TrainingJob, errors=(400, 401, 404, 409, 503)),
        ApiRoute("GET", f"{job}/events", r.events, "The training job's events (SSE): progress, loss, samples",
                 "adapters", kind="sse", stream_of=personalizer_pb2.TrainingEvent),
    ]


async def _create_request(request: Request, body: bytes) -> personalizer_pb2.CreateAdapterRequest:
    """The multipart form as a CreateAdapterRequest (the personalizer validates the values)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidArgument("send the photos as multipart/form-data (fields photos, token, class_word, method, "
                              "steps, rank)", field="body")
    request._body = body  # already read (within the limit); the form parser reads it from here
    try:
        form = await request.form(max_files=MAX_PHOTOS, max_fields=16, max_part_size=64 * 1024)
    except Exception as exc:  # python-multipart's and starlette's parse errors alike
        if "Too many files" in str(exc):
            raise InvalidArgument(f"at most {MAX_PHOTOS} photos", field="photos") from None
        if "Part exceeded maximum size" in str(exc):
            raise PayloadTooLarge(f"a form field is over {64 * 1024} bytes") from None
        raise InvalidArgument(f"the multipart form is malformed: {exc}", field="body") from None
    photos = [await p.read() for p in form.getlist("photos") if isinstance(p, UploadFile)]
    text = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    method = text.get("method", "").strip().upper()
    if method not in _METHODS:
        raise InvalidArgument(f"method must be LORA or TEXTUAL_INVERSION, got {method!r}", field="method")
    return personalizer_pb2.CreateAdapterRequest(
        reference_images=photos, token=text.get("token", ""),
        class_word=text.get("class_word", text.get("classWord", "")), method=_METHODS[method],  # type: ignore[arg-type]
        steps=_count(text, "steps"), rank=_count(text, "rank"))


def _count(text: dict[str, str], name: str) -> int:
    raw = text.get(name, "0").strip() or "0"
    if not raw.isdigit() or int(raw) > 1_000_000:
        raise InvalidArgument(f"{name} must be a whole number, got {raw[:20]!r}", field=name)
    return int(raw)


__all__ = ["adapter_routes"]
