"""Interactive work goes first: a background loop waits between its steps while any runs."""

from __future__ import annotations

import threading
import time

from philip.priority import DevicePriority


def test_background_work_waits_while_interactive_work_runs() -> None:
    device = DevicePriority()
    steps: list[float] = []
    done = threading.Event()

    def training() -> None:
        while len(steps) < 5:
            device.wait_for_turn()
            steps.append(time.monotonic())
            time.sleep(0.01)
        done.set()

    with device.interactive():
        worker = threading.Thread(target=training)
        worker.start()
        time.sleep(0.3)
        assert steps == []  # not one step while the round runs
        released = time.monotonic()
    assert done.wait(5)
    worker.join()
    assert len(steps) == 5 and steps[0] >= released


def test_waiting_ends_when_the_job_should_stop() -> None:
    device = DevicePriority()
    with device.interactive():
        started = time.monotonic()
        device.wait_for_turn(should_stop=lambda: time.monotonic() - started > 0.2, poll_s=0.05)
        assert 0.2 <= time.monotonic() - started < 1.0
    assert device.wait_for_turn() == 0.0  # nothing interactive: no wait at all


def test_run_interactive_counts_while_the_function_runs() -> None:
    device = DevicePriority()
    assert device.run_interactive(lambda: device.busy) == 1
    assert device.busy == 0
