"""Uploaded reference images for a session: what the person wants, liked from round 1 without training.

Validated like an adapter's references (PNG or JPEG, the size read from the header before any pixel is
decoded) and stored downscaled: FABRIC encodes them at the round's size, and the refiner takes
references up to 1 megapixel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from PIL import Image

from philip.images import decode_upload, png_bytes
from philip.rpc.errors import InvalidArgument
from services.gateway.session_events import Picture

MAX_SESSION_REFERENCES = 7  # per session, all messages together
MAX_UPLOAD_PIXELS = 16_000_000  # as adapter references
STORED_SIDE = 1024  # 1024 x 1024 at most: the refiner's limit for a reference


async def decode_references(blobs: Sequence[bytes], field: str = "reference_images") -> tuple[Picture, ...]:
    """The uploads as stored pictures (off the event loop: decoding 16 megapixels takes a while)."""
    if len(blobs) > MAX_SESSION_REFERENCES:
        raise InvalidArgument(f"{field} takes 0-{MAX_SESSION_REFERENCES} images, got {len(blobs)}", field=field)
    return tuple(await asyncio.gather(*(asyncio.to_thread(_picture, data, f"{field}[{i}]")
                                        for i, data in enumerate(blobs))))


def _picture(data: bytes, field: str) -> Picture:
    image = decode_upload(data, formats=("PNG", "JPEG"), max_pixels=MAX_UPLOAD_PIXELS, field=field)
    image.thumbnail((STORED_SIDE, STORED_SIDE), Image.Resampling.LANCZOS)
    return Picture(png_bytes(image), image.width, image.height)


def check_references(pictures: Sequence[Picture], earlier: int) -> None:
    if earlier + len(pictures) > MAX_SESSION_REFERENCES:
        raise InvalidArgument(f"a session takes at most {MAX_SESSION_REFERENCES} reference images; it has {earlier}, "
                              f"this message adds {len(pictures)}", field="reference_images")
