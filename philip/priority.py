"""Interactive work before training on a shared device.

Generation batches, feedback rounds and upscales run inside ``interactive()``; a training loop in
the same process calls ``wait_for_turn()`` between its steps and waits while any of them runs. On
one CPU or GPU shared by everything (``philip serve all``) a person's round then runs as on an
idle device, and training takes the gaps. Pods on separate GPUs (Kubernetes) share no device;
there the PriorityClasses of deploy/k8s order interactive pods before training ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from philip import metrics

T = TypeVar("T")


class DevicePriority:
    """Counts interactive work in flight; background work waits for zero. Thread-safe."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = threading.Condition()
        self.enabled = True  # False: background work never waits (`philip bench priority` compares)

    @property
    def busy(self) -> int:
        return self._busy

    @contextmanager
    def interactive(self) -> Iterator[None]:
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    def run_interactive(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` as interactive work (for executors and ``asyncio.to_thread``)."""
        with self.interactive():
            return fn(*args, **kwargs)

    def wait_for_turn(self, should_stop: Callable[[], bool] = lambda: False, poll_s: float = 0.25) -> float:
        """Block until no interactive work runs (or ``should_stop``); returns the seconds waited."""
        if not self._busy or not self.enabled:
            return 0.0
        started = time.monotonic()
        with self._idle:
            while self._busy and not should_stop():
                self._idle.wait(poll_s)
        waited = time.monotonic() - started
        metrics.TRAINING_YIELDED_SECONDS.inc(waited)
        return waited


DEVICE = DevicePriority()  # one per process: the process's device is shared by all its services

__all__ = ["DEVICE", "DevicePriority"]
