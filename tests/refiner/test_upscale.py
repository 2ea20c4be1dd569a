"""The upscaling domain: PNG validation, scale check, progress then the final PNG."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from philip.images import png_bytes
from philip.models.upscaler import OnnxUpscaler
from philip.rpc.errors import InvalidArgument
from services.refiner.upscale import InvalidImage, UpscaledImage, UpscaleEvent, UpscaleProgress, Upscaler

MODEL = Path(__file__).resolve().parents[2] / "models" / "philip-tiny-x4.onnx"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="models/philip-tiny-x4.onnx not trained")


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler(OnnxUpscaler(MODEL, tile=32, threads=1))


def _png(width: int = 64, height: int = 64) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(height) for x in range(width)])
    return png_bytes(image)


async def _collect(upscaler: Upscaler, data: bytes, scale: int = 0) -> list[UpscaleEvent]:
    return [event async for event in upscaler.upscale(data, scale)]


@pytest.mark.parametrize("scale", [0, 4])
async def test_upscale_streams_progress_then_png(upscaler: Upscaler, scale: int) -> None:
    events = await _collect(upscaler, _png(), scale)
    *progress, last = events
    assert progress == [UpscaleProgress(k, 4) for k in range(1, 5)]  # 64x64 in 32-px tiles
    assert isinstance(last, UpscaledImage)
    assert (last.width, last.height) == (256, 256)
    out = Image.open(io.BytesIO(last.png))
    assert out.format == "PNG" and out.size == (256, 256)


async def test_wrong_scale_names_the_allowed_one(upscaler: Upscaler) -> None:
    with pytest.raises(InvalidArgument, match="scale must be 4") as err:
        await _collect(upscaler, _png(), 2)
    assert err.value.field == "scale"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(("data", "match"), [
    (b"", "empty"),
    (b"definitely not an image", "not a PNG"),
    (_jpeg(), "looks like JPEG"),
    (_png()[:60], "damaged or truncated"),
])
async def test_bad_bytes_are_invalid_image(upscaler: Upscaler, data: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as err:
        await _collect(upscaler, data)
    assert err.value.field == "image"
    assert isinstance(err.value, ValueError) and isinstance(err.value, InvalidImage)


async def test_more_than_four_megapixels_is_refused(upscaler: Upscaler) -> None:
    big = png_bytes(Image.new("RGB", (2001, 2000)))
    with pytest.raises(InvalidArgument, match="4 megapixels") as err:
        await _collect(upscaler, big)
    assert err.value.field == "image"


async def test_pillow_bomb_guard_becomes_invalid_image(upscaler: Upscaler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2x the limit: Pillow refuses
    with pytest.raises(InvalidImage, match="too large to decode safely") as err:
        await _collect(upscaler, _png())
    assert err.value.field == "image"


async def test_stopping_early_leaves_no_dangling_work(upscaler: Upscaler) -> None:
    stream = upscaler.upscale(_png())
    first = await anext(stream)
    assert first == UpscaleProgress(1, 4)
    await stream.aclose()  # the caller went away (e.g. the RPC was cancelled)
    events = await _collect(upscaler, _png())  # and the upscaler still works
    assert isinstance(events[-1], UpscaledImage)


class _HeldUpscaler:
    """Stands in for the ONNX model: holds every upscale until ``release`` is set (a thread event)."""

    scale = 4

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.running = 0

    def upscale(self, image: Image.Image, progress: object = None) -> Image.Image:
        self.running += 1
        self.release.wait(10)
        return image.resize((image.width * 4, image.height * 4))


async def test_upscales_beyond_the_line_are_refused_at_once_with_a_retry_hint() -> None:
    import asyncio

    from philip.rpc.errors import ResourceExhausted

    model = _HeldUpscaler()
    upscaler = Upscaler(model, max_running=1, max_waiting=1)  # type: ignore[arg-type]
    first = asyncio.ensure_future(_collect(upscaler, _png(8, 8)))
    second = asyncio.ensure_future(_collect(upscaler, _png(8, 8)))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if model.running == 1:
            break
    assert model.running == 1  # one at a time: the second waits in line
    with pytest.raises(ResourceExhausted, match="limit 1") as refused:
        await _collect(upscaler, _png(8, 8))
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    model.release.set()
    done = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert all(isinstance(events[-1], UpscaledImage) for events in done) and model.running == 2
