"""`philip bench priority`: a person's round while a training job runs in the same process.

`philip serve all` runs generation and training on one device. One run measures the same plain
round (Generate, 4 images x 8 steps, CFG) on the idle services, beside a LoRA training job with
interactive-first scheduling (the default: training waits between its steps while a round runs),
and beside one with it switched off; and how many training steps were made meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from philip.clients.embedded import gateway_stub
from philip.clients.generate import stream_generation
from philip.evals.personalize import reference_images
from philip.images import png_bytes
from philip.priority import DEVICE
from philip.settings import Settings
from philip.v1 import common_pb2, gateway_pb2_grpc, personalizer_pb2


async def _rounds(stub: gateway_pb2_grpc.GatewayStub, n: int, steps: int, seed: int) -> list[float]:
    times = []
    for i in range(n):
        params = common_pb2.GenerationParams(prompt="a red circle on a blue background", num_images=4, steps=steps,
                                             seed=seed + i, guidance=5.0)
        started = time.monotonic()
        await stream_generation(stub, params, timeout_s=600)
        times.append(time.monotonic() - started)
    return times


async def run_priority_bench(model_dir: Path, rounds: int = 3, steps: int = 8,
                             threads: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as adapters:
        settings = Settings.from_env(port=0, host="127.0.0.1", model_dir=str(model_dir), adapters_dir=adapters,
                                     threads=threads)
        async with gateway_stub(settings=settings) as stub:
            await _rounds(stub, 1, steps, 0)  # warm-up
            idle = await _rounds(stub, rounds, steps, 100)
            job = await stub.CreateAdapter(personalizer_pb2.CreateAdapterRequest(
                reference_images=[png_bytes(im) for im in reference_images(5)], token="zqbench",
                class_word="shape", steps=5000))  # longer than the measurement
            progress: list[tuple[float, int]] = []
            running = asyncio.Event()

            async def watch() -> None:
                async for event in stub.WatchJob(personalizer_pb2.WatchJobRequest(job_id=job.job_id)):
                    if event.WhichOneof("event") == "progress":
                        progress.append((time.monotonic(), event.progress.step))
                        running.set()

            watcher = asyncio.create_task(watch())
            try:
                await asyncio.wait_for(running.wait(), 300)
                results = {}
                for name, enabled in (("with_priority", True), ("without_priority", False)):
                    DEVICE.enabled = enabled
                    start = time.monotonic()
                    results[name] = await _rounds(stub, rounds, steps, 200)
                    results[name + "_steps"] = sum(1 for t, _ in progress if t >= start)  # type: ignore[assignment]
            finally:
                DEVICE.enabled = True
                with contextlib.suppress(Exception):
                    await stub.CancelJob(personalizer_pb2.CancelJobRequest(job_id=job.job_id))
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
    idle_s = statistics.median(idle)
    beside = statistics.median(results["with_priority"])
    unguarded = statistics.median(results["without_priority"])
    return {
        "round_s_idle": round(idle_s, 3),
        "round_s_beside_training": round(beside, 3),
        "round_s_beside_training_no_priority": round(unguarded, 3),
        "slowdown_with_priority": round(beside / idle_s, 3),
        "slowdown_without_priority": round(unguarded / idle_s, 3),
        "training_steps_during_rounds": results["with_priority_steps"],
        "training_steps_during_rounds_no_priority": results["without_priority_steps"],
        "rounds": rounds, "steps": steps, "images": 4,
    }
