"""Request validation and defaults: every violation names its field and the allowed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from philip.generation.requests import (
    MAX_SEED,
    GenerationParams,
    RequestResolver,
    load_styles,
    preset_size,
)
from philip.rpc.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.generator.conftest import STYLES_PATH

SCHEDULERS = ("dpm++", "euler", "euler_a", "ddim", "lcm")


@pytest.fixture
def resolver() -> RequestResolver:
    return RequestResolver(native_size=64, schedulers=SCHEDULERS, styles=load_styles(STYLES_PATH))


def test_defaults_are_filled_in(resolver: RequestResolver) -> None:
    request = resolver.resolve(GenerationParams(prompt="a red circle"))
    assert (request.num_images, request.steps, request.guidance, request.scheduler) == (4, 8, 5.0, "dpm++")
    assert (request.width, request.height) == (64, 64)  # the model's native size
    assert (request.preview_every, request.preview_mode, request.adapter_ids) == (0, "linear", ())
    assert 0 <= request.seed <= MAX_SEED
    assert request.image_seeds == [request.seed + i for i in range(4)]


def test_random_seed_differs_and_explicit_seed_is_kept(resolver: RequestResolver) -> None:
    seeds = {resolver.resolve(GenerationParams(prompt="x")).seed for _ in range(5)}
    assert len(seeds) > 1
    assert resolver.resolve(GenerationParams(prompt="x", seed=0)).seed == 0
    assert resolver.resolve(GenerationParams(prompt="x", seed=MAX_SEED)).seed == MAX_SEED


@pytest.mark.parametrize(
    ("aspect", "native", "size"),
    [("square", 64, (64, 64)), ("landscape_4_3", 64, (64, 48)), ("portrait_3_4", 64, (48, 64)),
     ("wide_16_9", 64, (64, 40)), ("tall_9_16", 512, (288, 512)), ("wide_16_9", 512, (512, 288))],
)
def test_aspect_presets_use_the_native_long_side(aspect: str, native: int, size: tuple[int, int]) -> None:
    assert preset_size(aspect, native) == size
    resolver = RequestResolver(native_size=native, schedulers=SCHEDULERS)
    request = resolver.resolve(GenerationParams(prompt="x", aspect_ratio=aspect))
    assert (request.width, request.height) == size


def test_explicit_size_wins_over_the_preset(resolver: RequestResolver) -> None:
    request = resolver.resolve(GenerationParams(prompt="x", width=128, height=32, aspect_ratio="tall_9_16"))
    assert (request.width, request.height) == (128, 32)


@pytest.mark.parametrize(
    ("changes", "field", "range_text"),
    [
        ({"prompt": ""}, "prompt", "1-1000"),
        ({"prompt": "   "}, "prompt", "1-1000"),
        ({"prompt": "x" * 1001}, "prompt", "1-1000"),
        ({"negative_prompt": "x" * 1001}, "negative_prompt", "1000"),
        ({"num_images": 9}, "num_images", "1-8"),
        ({"steps": 101}, "steps", "1-100"),
        ({"guidance": 30.5}, "guidance", "0-30"),
        ({"guidance": -1.0}, "guidance", "0-30"),
        ({"guidance": float("nan")}, "guidance", "0-30"),
        ({"width": 63, "height": 64}, "width", "multiple of 8"),
        ({"width": 1032, "height": 64}, "width", "8-1024"),
        ({"width": 64, "height": 0}, "height", "multiple of 8"),
        ({"aspect_ratio": "panorama"}, "aspect_ratio", "square"),
        ({"scheduler": "heun"}, "scheduler", "dpm++"),
        ({"seed": MAX_SEED + 1}, "seed", str(MAX_SEED)),
        ({"preview_every": 101}, "preview_every", "0-100"),
        ({"preview_mode": "jpeg"}, "preview_mode", "linear"),
        ({"style": "baroque"}, "style", "flat"),
        ({"adapter_ids": ("a", "b", "c", "d", "e")}, "adapter_ids", "0-4"),
    ],
)
def test_violations_name_field_and_range(resolver: RequestResolver, changes: dict, field: str,
                                         range_text: str) -> None:
    params = GenerationParams(**{"prompt": "a red circle", **changes})
    with pytest.raises(InvalidArgument) as caught:
        resolver.resolve(params)
    assert caught.value.field == field
    assert field in caught.value.message and range_text in caught.value.message


def test_adapter_ids_are_checked_for_form_then_existence(tmp_path: Path) -> None:
    resolver = RequestResolver(native_size=64, schedulers=SCHEDULERS, adapters_dir=str(tmp_path))
    with pytest.raises(InvalidArgument, match="'sks-dog' is not an adapter id") as caught:
        resolver.resolve(GenerationParams(prompt="x", adapter_ids=("sks-dog",)))
    assert caught.value.field == "adapter_ids"
    with pytest.raises(NotFound, match="unknown adapter id ad_0123456789abcdef") as missing:
        resolver.resolve(GenerationParams(prompt="x", adapter_ids=("ad_0123456789abcdef",)))
    assert missing.value.field == "adapter_ids"
    (tmp_path / "ad_0123456789abcdef").mkdir()
    (tmp_path / "ad_0123456789abcdef" / "adapter.json").write_text("{}")
    both = ("ad_0123456789abcdef", "ad_0123456789abcdef")
    assert resolver.resolve(GenerationParams(prompt="x", adapter_ids=both)).adapter_ids == both[:1]


def test_adapters_need_an_adapters_dir(resolver: RequestResolver) -> None:
    with pytest.raises(FailedPrecondition, match="not configured for adapters"):
        resolver.resolve(GenerationParams(prompt="x", adapter_ids=("ad_0123456789abcdef",)))


def test_style_wraps_prompt_and_extends_negative(resolver: RequestResolver) -> None:
    request = resolver.resolve(GenerationParams(prompt="a red circle", negative_prompt="blurry", style="flat"))
    assert request.prompt == "a red circle, flat vector illustration, solid colours, clean edges"
    assert request.negative_prompt == "blurry, gradient, texture, noise, blur, photo"


def test_style_counts_towards_the_prompt_limit(resolver: RequestResolver) -> None:
    resolver.resolve(GenerationParams(prompt="x" * 1000))
    with pytest.raises(InvalidArgument, match="after the style") as caught:
        resolver.resolve(GenerationParams(prompt="x" * 990, style="vivid"))
    assert caught.value.field == "prompt"


def test_shipped_styles_file_has_three_presets() -> None:
    styles = load_styles(STYLES_PATH)
    assert set(styles) == {"flat", "vivid", "minimal"}
    # Suffix-only: a short text window truncates the style words, never the subject.
    assert all(not style.prefix and style.suffix and style.negative for style in styles.values())


def test_styles_file_errors(tmp_path: Path) -> None:
    assert load_styles(tmp_path / "absent.toml") == {}
    bad = tmp_path / "bad.toml"
    bad.write_text('[odd]\nprefix = "x"\ncolour = "red"\n')
    with pytest.raises(ValueError, match="odd"):
        load_styles(bad)
