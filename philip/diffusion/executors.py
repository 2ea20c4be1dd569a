"""One worker thread per device, and the way back from it to the event loop.

Torch work must never run on the event loop, and a pipeline (its scheduler swap, its hooks) is not safe to use
from two threads. Every pipeline of the process on one device runs on that device's single thread, so the
generator's batches and the refiner's rounds of ``philip serve all`` take turns on the device instead of
fighting over its cores; each call is interactive work (:mod:`philip.priority`), which training waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from typing import Any, TypeVar

from philip.priority import DEVICE

T = TypeVar("T")

_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def device_executor(device: object) -> ThreadPoolExecutor:
    """The process's one worker thread for ``device`` (a ``torch.device`` or its name), created on first use."""
    name = str(device)
    with _executors_lock:
        executor = _executors.get(name)
        if executor is None:
            executor = _executors[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"denoise-{name}")
        return executor


class DeviceWorker:
    """One pipeline owner's handle on its device's thread; :meth:`close` waits for what this owner submitted."""

    def __init__(self, device: object) -> None:
        self._executor = device_executor(device)
        self._last: Future[Any] | None = None  # one thread runs in order: the last one done means all are

    async def run(self, fn: Callable[..., T], *args: Any, stop: Callable[[], None] | None = None) -> T:
        """``fn(*args)`` on the device's thread as interactive work.

        With ``stop``, cancelling the awaiting task calls it and waits for ``fn`` to return (``stop`` must make
        it return soon, e.g. within one denoising step), so the pipeline is free when ``CancelledError``
        propagates. Without, the task stops waiting at once and ``fn`` runs on (or never starts).
        """
        future = self._executor.submit(DEVICE.run_interactive, fn, *args)
        self._last = future
        waited = asyncio.wrap_future(future)
        if stop is None:
            return await waited
        try:
            return await asyncio.shield(waited)
        except asyncio.CancelledError:
            stop()
            with contextlib.suppress(Exception):
                await waited
            raise

    def close(self) -> None:
        """Wait for this owner's work (the thread itself is the device's and stays). Blocking."""
        if self._last is not None:
            wait_for_futures([self._last])


def post_to_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """``callback(*args)`` on ``loop``, from a worker thread; dropped once the loop has closed (nobody listens)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
