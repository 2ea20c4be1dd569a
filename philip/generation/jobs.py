"""Where generation jobs live in the store: the record kind and each job's event stream
(written by the generator, read by the gateway's Subscribe and SSE routes)."""

from __future__ import annotations

JOB_KIND = "job"


def job_stream(job_id: str) -> str:
    return f"job:{job_id}"


__all__ = ["JOB_KIND", "job_stream"]
