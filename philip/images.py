"""Image bytes and layouts shared by services, clients and evaluations."""

from __future__ import annotations

import io
import itertools
import warnings

from PIL import Image, ImageDraw

from philip.rpc.errors import InvalidArgument


class InvalidImage(InvalidArgument, ValueError):
    """Uploaded image bytes are not usable (unreadable, a format not accepted, too large)."""

    def __init__(self, message: str, *, field: str = "image") -> None:
        super().__init__(message, field=field)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def decode_upload(data: bytes, *, formats: tuple[str, ...], max_pixels: int, field: str = "image") -> Image.Image:
    """An RGB image from uploaded bytes in one of ``formats`` ("PNG", "JPEG"); :class:`InvalidImage`
    naming ``field`` for anything else.

    The size is checked from the header before any pixel is decoded, so a decompression bomb
    costs nothing; Pillow's own ``MAX_IMAGE_PIXELS`` guard is also turned into an error.
    """
    accepted = " or ".join(formats)
    if not data:
        raise InvalidImage(f"{field} is empty; send the {accepted} file's bytes", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"{field} is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                    f"the limit is {max_pixels / 1e6:g} megapixels, downscale it first", field=field)
            image.load()
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"{field} is too large to decode safely ({exc}); the limit is "
                           f"{max_pixels / 1e6:g} megapixels", field=field) from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImage(f"{field} is not a {accepted} image ({_sniff(data)}); send {accepted} bytes",
                           field=field) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{field} is a damaged or truncated image ({exc}); re-export it", field=field) from exc
    if width < 1 or height < 1:
        raise InvalidImage(f"{field} is {width}x{height}; it needs at least one pixel", field=field)
    return image.convert("RGB")


def _sniff(data: bytes) -> str:
    magics = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"RIFF", "WebP"),
              (b"BM", "BMP"))
    for magic, name in magics:
        if data.startswith(magic):
            return f"looks like {name}"
    return f"first bytes {data[:8]!r}"


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
