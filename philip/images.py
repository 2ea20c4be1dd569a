"""Image bytes and layouts shared by services, clients and evaluations."""

from __future__ import annotations

import io
import itertools

from PIL import Image, ImageDraw


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def contact_sheet(images: list[Image.Image], columns: int = 4, labels: bool = False) -> Image.Image:
    """Images in a grid (optionally numbered from 1, as the CLI asks for picks) on a grey canvas."""
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    gap = 4
    sheet = Image.new("RGB", (columns * (w + gap) + gap, rows * (h + gap) + gap), (96, 96, 96))
    draw = ImageDraw.Draw(sheet)
    for k, (r, c) in enumerate(itertools.product(range(rows), range(columns))):
        if k >= len(images):
            break
        x, y = gap + c * (w + gap), gap + r * (h + gap)
        sheet.paste(images[k], (x, y))
        if labels:
            draw.rectangle([x, y, x + 12, y + 11], fill=(0, 0, 0))
            draw.text((x + 3, y), str(k + 1), fill=(255, 255, 255))
    return sheet
