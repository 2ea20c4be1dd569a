"""The scheduler a request asked for, on the shared pipeline for one call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from philip.models.pipelines import make_scheduler


@contextmanager
def swapped_scheduler(pipe: Any, name: str) -> Iterator[Any]:
    """``pipe`` runs a fresh scheduler of kind ``name`` (configured like its own) inside the block.

    Schedulers keep per-call state (timesteps, step index, multistep history), so every call gets a fresh one,
    and the pipeline's own is put back for whoever calls it next, even when the call fails.
    """
    base = pipe.scheduler
    pipe.scheduler = make_scheduler(pipe, name)
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = base
