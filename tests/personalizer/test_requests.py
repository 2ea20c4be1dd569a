"""CreateAdapter validation: every bad field gets a message naming it and what is allowed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from philip.rpc.errors import InvalidArgument
from services.personalizer.requests import AdapterRequest, validate
from tests.personalizer.conftest import reference_pngs


def request(**changes: object) -> AdapterRequest:
    fields: dict[str, object] = {"reference_images": tuple(reference_pngs(5)), "token": "sks", "class_word": "shape"}
    return AdapterRequest(**{**fields, **changes})  # type: ignore[arg-type]


def big_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_defaults_are_filled_in() -> None:
    valid = validate(request())
    assert (valid.method, valid.steps, valid.rank, len(valid.images)) == ("lora", 500, 8, 5)
    assert validate(request(method="textual_inversion")).steps == 500


def test_jpeg_references_are_accepted() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), (10, 200, 10)).save(buf, format="JPEG")
    assert validate(request(reference_images=(buf.getvalue(),) * 4)).images[0].size == (80, 60)


@pytest.mark.parametrize(("changes", "field", "text"), [
    ({"reference_images": tuple(reference_pngs(3))}, "reference_images", "4-7 images"),
    ({"reference_images": tuple(reference_pngs(8))}, "reference_images", "got 8"),
    ({"token": "Sks"}, "token", "lowercase"),
    ({"token": "s"}, "token", "2-32"),
    ({"token": "sks dog"}, "token", "lowercase letters"),
    ({"class_word": " "}, "class_word", "1-32"),
    ({"method": "dreambooth-full"}, "method", "lora, textual_inversion"),
    ({"steps": 5001}, "steps", "1-5000"),
    ({"rank": 65}, "rank", "1-64"),
])
def test_bad_fields(changes: dict[str, object], field: str, text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(request(**changes))
    assert caught.value.field == field and text in caught.value.message


@pytest.mark.parametrize(("data", "text"), [
    (b"", "empty"),
    (b"these bytes are not an image", "not a PNG or JPEG image"),
    (b"GIF89a" + b"\0" * 40, "looks like GIF"),
])
def test_bytes_that_are_not_an_image(data: bytes, text: str) -> None:
    refs = (*reference_pngs(4), data)
    with pytest.raises(InvalidArgument) as caught:
        validate(request(reference_images=refs))
    assert caught.value.field == "reference_images[4]" and text in caught.value.message


def test_a_40_megapixel_image_is_refused_before_decoding() -> None:
    refs = (big_png(8000, 5000), *reference_pngs(4))
    with pytest.raises(InvalidArgument) as caught:
        validate(request(reference_images=refs))
    assert caught.value.field == "reference_images[0]"
    assert "40.0 megapixels" in caught.value.message and "limit is 16 megapixels" in caught.value.message
