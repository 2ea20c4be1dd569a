"""The training job record's state changes. Each is one compare-and-set (``Store.update_record_if``), so that a
client's cancel, the worker that trains a job and a worker taking it over never overwrite one another:

* start (a worker): queued -> running, or running -> running under a new worker (taking over from one that
  stopped), only if the record is still as that worker read it and no cancel was asked for;
* cancel (a client): queued -> cancelled; running -> running with ``cancel_requested`` (its worker stops);
* end (the worker training it): running -> succeeded / failed / cancelled, or back to queued, only while it is
  still running and still that worker's; succeeded only if no cancel was asked for.

A worker's change that is retried after an outage swallowed its reply finds itself already made: those changes
write the worker's own name and, with it, fields no one else writes together (its attempt number, its adapter
id), so a record that holds all of them is that change, done.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from philip.store import Store
from services.personalizer.records import CANCELLED, JOB_KIND, QUEUED, RUNNING, SUCCEEDED, TrainingJob

NO_CANCEL = (False, None)  # None: a record written before the field existed


async def start(store: Store, job: TrainingJob, consumer: str) -> TrainingJob | None:
    """``consumer`` takes the job it read as ``job``; None if the record changed since (cancelled, taken)."""
    fields = {"state": RUNNING, "worker": consumer, "attempts": job.attempts + 1}
    return await _change(store, job.job_id, fields, {**_as_read(job), "cancel_requested": NO_CANCEL}, mine=True)


async def end(store: Store, job_id: str, consumer: str, state: str, fields: Mapping[str, Any] | None = None, *,
              as_read: TrainingJob | None = None) -> TrainingJob | None:
    """``consumer`` ends the job it trains (or, with ``as_read``, one it read and never started); None if the job
    is not its own any more, or if it would succeed though a cancel was asked for."""
    expect: dict[str, Collection[Any]] = _as_read(as_read) if as_read else {"state": [RUNNING], "worker": [consumer]}
    if state == SUCCEEDED:
        expect["cancel_requested"] = NO_CANCEL
    return await _change(store, job_id, {**(fields or {}), "state": state, "worker": consumer}, expect, mine=True)


async def hand_back(store: Store, job_id: str, consumer: str) -> TrainingJob | None:
    """running -> queued for any worker (``consumer`` is shutting down); None if it is not ``consumer``'s.

    Not taken as done when a retry finds it queued: another worker may have handed it back, and a second queue
    entry for one job would have two workers train it."""
    return await _change(store, job_id, {"state": QUEUED, "worker": ""}, {"state": [RUNNING], "worker": [consumer]},
                         mine=False)


async def cancel_queued(store: Store, job_id: str, error: str) -> TrainingJob | None:
    """A client cancels a job no worker has started; None if one did meanwhile (or it ended)."""
    return await _change(store, job_id, {"state": CANCELLED, "error": error}, {"state": [QUEUED]}, mine=False)


async def flag_cancel(store: Store, job_id: str) -> TrainingJob | None:
    """A client asks the worker of a running job to stop; None if it is not running now."""
    return await _change(store, job_id, {"cancel_requested": True}, {"state": [RUNNING]}, mine=False)


async def record_step(store: Store, job_id: str, consumer: str, step: int) -> None:
    """Progress, written only while the job is ``consumer``'s: a worker that lost it must not move it back."""
    await store.update_record_if(JOB_KIND, job_id, {"step": step}, {"state": [RUNNING], "worker": [consumer]})


def _as_read(job: TrainingJob) -> dict[str, Collection[Any]]:
    return {"state": [job.state], "worker": [job.worker], "attempts": [job.attempts]}


async def _change(store: Store, job_id: str, fields: Mapping[str, Any], expect: Mapping[str, Collection[Any]], *,
                  mine: bool) -> TrainingJob | None:
    merged = await store.update_record_if(JOB_KIND, job_id, dict(fields), expect)
    if merged is None and mine:
        current = await store.get_record(JOB_KIND, job_id)
        if current is not None and all(current.get(name) == value for name, value in fields.items()):
            merged = current
    return None if merged is None else TrainingJob.from_record(merged)
