"""Validating a CreateAdapter request: reference images, token, class word, method, numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from philip.images import decode_upload
from philip.rpc.errors import InvalidArgument
from services.personalizer.trainer import DEFAULT_STEPS

MIN_REFERENCES, MAX_REFERENCES = 4, 7
MAX_REFERENCE_PIXELS = 16_000_000  # 16 megapixels, as the API promises
MAX_STEPS = 5_000
MAX_RANK = 64
DEFAULT_RANK = 8
TOKEN = re.compile(r"^[a-z]{2,32}$")


@dataclass(frozen=True, slots=True)
class AdapterRequest:
    """What the caller asked for (bytes kept as sent; ``images`` decoded once for validation)."""

    reference_images: tuple[bytes, ...]
    token: str
    class_word: str
    method: str = "lora"  # "lora" | "textual_inversion"
    steps: int = 0  # 0 = the method's default
    rank: int = 0  # 0 = default


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    """A validated request with defaults filled in."""

    images: tuple[Image.Image, ...]
    token: str
    class_word: str
    method: str
    steps: int
    rank: int


def validate(request: AdapterRequest) -> TrainingRequest:
    """Check every field; InvalidArgument names the field and says what is allowed."""
    n = len(request.reference_images)
    if not MIN_REFERENCES <= n <= MAX_REFERENCES:
        raise InvalidArgument(f"reference_images takes {MIN_REFERENCES}-{MAX_REFERENCES} images of the subject; "
                              f"got {n}", field="reference_images")
    if not TOKEN.match(request.token):
        raise InvalidArgument(f"token must be 2-32 lowercase letters a-z (a made-up word such as 'sks'); "
                              f"got {request.token!r}", field="token")
    class_word = request.class_word.strip()
    if not 1 <= len(class_word) <= 32:
        raise InvalidArgument(f"class_word must be 1-32 characters naming the kind of subject (e.g. 'dog'); "
                              f"got {len(class_word)}", field="class_word")
    if request.method not in DEFAULT_STEPS:
        raise InvalidArgument(f"method must be one of {', '.join(DEFAULT_STEPS)}; got {request.method!r}",
                              field="method")
    if not 0 <= request.steps <= MAX_STEPS:
        raise InvalidArgument(f"steps must be 1-{MAX_STEPS} (0 = default {DEFAULT_STEPS[request.method]}); "
                              f"got {request.steps}", field="steps")
    if not 0 <= request.rank <= MAX_RANK:
        raise InvalidArgument(f"rank must be 1-{MAX_RANK} (0 = default {DEFAULT_RANK}); got {request.rank}",
                              field="rank")
    images = tuple(
        decode_upload(data, formats=("PNG", "JPEG"), max_pixels=MAX_REFERENCE_PIXELS,
                      field=f"reference_images[{i}]")
        for i, data in enumerate(request.reference_images)
    )
    return TrainingRequest(images, request.token, class_word, request.method,
                           request.steps or DEFAULT_STEPS[request.method], request.rank or DEFAULT_RANK)
