"""HTTP routes of generation jobs and images: the generator's own answers, and the store's PNGs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from philip.rpc.errors import FailedPrecondition
from philip.v1 import common_pb2, generator_pb2
from services.gateway import codec
from services.gateway.fanout import buffered
from services.gateway.http.api import UPSTREAM_TIMEOUT_S, ApiRoute, EdgeState, last_event_id, request_id
from services.gateway.http.protojson import ProtoResponse, parse, read_body
from services.gateway.http.sse import event_frames, sse_response
from services.gateway.images import image_png
from services.gateway.upstream import metadata

SUBSCRIBER_BUFFER = 16
CANCEL_WAIT_S = 5.0  # a cancelled job ends within one step; answer with its final state when we can
_ENDED = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)


class _JobRoutes:
    """The handlers of ``job_routes``: plain methods over the edge's domain objects."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state
        self.core = state.core

    async def get_job(self, job_id: str) -> generator_pb2.Job:
        job: generator_pb2.Job = await self.core.generator.GetJob(generator_pb2.GetJobRequest(job_id=job_id),
                                                            timeout=UPSTREAM_TIMEOUT_S, metadata=metadata())
        return job

    async def create(self, request: Request) -> Response:
        body = await read_body(request)

        async def work() -> Response:
            job_id = await self.core.generations.submit(parse(body, common_pb2.GenerationParams))
            return ProtoResponse(await self.get_job(job_id), 202, {"Location": f"/v1/jobs/{job_id}"})

        return await self.state.idempotency.run(request.headers.get("idempotency-key"), "generations", body, work)

    async def get(self, request: Request) -> Response:
        return ProtoResponse(await self.get_job(request.path_params["job_id"]))

    async def cancel(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        parse(await read_body(request), generator_pb2.CancelGeneration)
        job = await self.get_job(job_id)  # NOT_FOUND (or another tenant's) first
        if job.state in _ENDED:
            raise FailedPrecondition(f"job {job_id} has already ended ({common_pb2.JobState.Name(job.state)})",
                                     field="job_id")
        await self.core.generations.cancel(job_id)
        await self.core.generations.wait(job_id, CANCEL_WAIT_S)
        return ProtoResponse(await self.get_job(job_id))

    async def events(self, request: Request) -> Response:
        job_id, after = request.path_params["job_id"], last_event_id(request)
        await self.core.sessions.job_visible(job_id)

        async def items() -> AsyncIterator[tuple[str, Message]]:
            entries = buffered(self.core.sessions.follow_job_entries(job_id, after),
                               lambda e: codec.job_droppable(e.payload), SUBSCRIBER_BUFFER)
            async for entry in entries:
                yield entry.id, generator_pb2.GenerateEvent.FromString(entry.payload)

        return sse_response(event_frames(items(), closing=self.state.closing, request_id=request_id(request)),
                            self.core.open_stream())

    async def image(self, request: Request) -> Response:
        image_id = request.path_params["image_id"]
        etag = f'"{image_id}"'  # an id names one image forever
        headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
        png = await image_png(self.core.store, image_id)  # 404 for unknown and for another tenant's, before a 304
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(png, media_type="image/png", headers=headers)



def job_routes(state: EdgeState) -> list[ApiRoute]:
    r = _JobRoutes(state)
    one = "/v1/jobs/{job_id}"
    return [
        ApiRoute("POST", "/v1/generations", r.create, "Generate a batch; the job runs on after the answer", "jobs",
                 common_pb2.GenerationParams, generator_pb2.Job, 202, idempotent_create=True),
        ApiRoute("GET", one, r.get, "A generation job's state and images", "jobs", None, generator_pb2.Job),
        ApiRoute("POST", f"{one}/cancel", r.cancel, "Cancel a generation job (it stops within one step)", "jobs",
                 generator_pb2.CancelGeneration, generator_pb2.Job, errors=(400, 401, 404, 409, 503)),
        ApiRoute("GET", f"{one}/events", r.events, "The job's events (SSE): replay, then live, until it ends", "jobs",
                 kind="sse", stream_of=generator_pb2.GenerateEvent),
        ApiRoute("GET", "/v1/images/{image_id}.png", r.image, "Any image of the tenant's sessions and jobs", "images",
                 kind="png", errors=(400, 401, 404, 503)),
    ]


__all__ = ["job_routes"]
