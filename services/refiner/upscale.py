"""Upscaling one image: validate the PNG and scale, run the ONNX model off the event loop, stream.

    upscaler = Upscaler(OnnxUpscaler("models/philip-tiny-x4.onnx"))
    async for event in upscaler.upscale(png, scale=0):
        if isinstance(event, UpscaleProgress): ...   # tiles done / in all
        else: ...                                    # UpscaledImage: the final PNG, last event
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from PIL import Image

from philip.diffusion.executors import post_to_loop
from philip.images import InvalidImage, decode_upload, png_bytes
from philip.models.upscaler import OnnxUpscaler
from philip.priority import DEVICE
from philip.rpc.errors import InvalidArgument, ResourceExhausted

MAX_INPUT_PIXELS = 4_000_000  # 4 megapixels, as the API promises

__all__ = ["InvalidImage", "Upscaler", "decode_png"]


@dataclass(frozen=True)
class UpscaleProgress:
    done: int  # tiles done
    total: int  # tiles in all


@dataclass(frozen=True)
class UpscaledImage:
    png: bytes
    width: int
    height: int


UpscaleEvent = UpscaleProgress | UpscaledImage


def decode_png(data: bytes, *, max_pixels: int = MAX_INPUT_PIXELS, field: str = "image") -> Image.Image:
    """An RGB image from PNG ``data``; :class:`InvalidImage` naming ``field`` for anything else."""
    return decode_upload(data, formats=("PNG",), max_pixels=max_pixels, field=field)


class Upscaler:
    """The refiner's upscaling domain around one :class:`OnnxUpscaler` (fixed scale)."""

    def __init__(self, model: OnnxUpscaler, *, max_pixels: int = MAX_INPUT_PIXELS, max_running: int = 1,
                 max_waiting: int = 16) -> None:
        self.model = model
        self.max_pixels = max_pixels
        # Upscales share the CPU (or GPU) with the rounds: a few at a time, a bounded line behind them.
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(max_running)
        self._waiting = 0
        self._upscale_s = 1.0  # moving average, for retry hints

    @property
    def scale(self) -> int:
        return int(self.model.scale)

    def check_scale(self, scale: int) -> int:
        """The scale to use: the model's for 0, else ``scale`` if it is the model's."""
        if scale in (0, self.scale):
            return self.scale
        raise InvalidArgument(
            f"scale must be {self.scale} (this server's upscaler is x{self.scale}) or 0 for that; got {scale}",
            field="scale",
        )

    async def upscale(self, png: bytes, scale: int = 0) -> AsyncGenerator[UpscaleEvent, None]:
        """Validate, then yield :class:`UpscaleProgress` per tile and the :class:`UpscaledImage` last.

        Input errors raise before the first event. The model runs in a worker thread; closing the
        iterator early lets the current upscale finish in the background (it is not interruptible).
        """
        self.check_scale(scale)
        image = decode_png(png, max_pixels=self.max_pixels)
        if self._slots.locked() and self._waiting >= self.max_waiting:
            retry = round(max(0.1, self._upscale_s * (self._waiting + 1)), 1)
            raise ResourceExhausted(f"{self._waiting} upscales are waiting on this refiner (limit {self.max_waiting}); "
                                    f"retry in about {retry} s or on another replica", retry_after_s=retry)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            async for event in self._run(image):
                yield event
        finally:
            self._slots.release()

    async def _run(self, image: Image.Image) -> AsyncGenerator[UpscaleEvent, None]:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[UpscaleProgress] = asyncio.Queue()

        def progress(done: int, total: int) -> None:
            post_to_loop(loop, events.put_nowait, UpscaleProgress(done, total))

        def work() -> bytes:
            return png_bytes(self.model.upscale(image, progress=progress))

        task = asyncio.ensure_future(asyncio.to_thread(DEVICE.run_interactive, work))
        getter: asyncio.Future[UpscaleProgress] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    break
                yield getter.result()
            while not events.empty():  # progress queued just before the result
                yield events.get_nowait()
            data = await task
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():  # the caller stopped listening: let the tile loop finish quietly
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._upscale_s = 0.7 * self._upscale_s + 0.3 * (time.monotonic() - started)
        yield UpscaledImage(png=data, width=image.width * self.scale, height=image.height * self.scale)
