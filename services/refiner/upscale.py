"""Upscaling one image: validate the PNG and scale, run the ONNX model off the event loop, stream.

    upscaler = Upscaler(OnnxUpscaler("models/philip-tiny-x4.onnx"))
    async for event in upscaler.upscale(png, scale=0):
        if isinstance(event, UpscaleProgress): ...   # tiles done / in all
        else: ...                                    # UpscaledImage: the final PNG, last event
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from PIL import Image

from philip.images import InvalidImage, decode_upload, png_bytes
from philip.models.upscaler import OnnxUpscaler
from philip.priority import DEVICE
from philip.rpc.errors import InvalidArgument

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

    def __init__(self, model: OnnxUpscaler, *, max_pixels: int = MAX_INPUT_PIXELS) -> None:
        self.model = model
        self.max_pixels = max_pixels

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
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[UpscaleProgress] = asyncio.Queue()

        def progress(done: int, total: int) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, UpscaleProgress(done, total))

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
        yield UpscaledImage(png=data, width=image.width * self.scale, height=image.height * self.scale)
