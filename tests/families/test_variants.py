"""SDXL-Turbo and SDXL-Lightning share SDXL's pipeline class: recognised by the folder's `variant`, the checkpoint
files' names or the folder's name, they get their own defaults, step range and size cap; SD-1.x keeps its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from philip.generation.requests import GenerationParams, RequestResolver
from philip.models.families import SD, SDXL, GenerationDefaults, generation_defaults
from philip.models.variants import Variant, detect_variant
from philip.rpc.errors import InvalidArgument

SCHEDULERS = ("dpm++", "euler", "euler_a")


def _folder(root: Path, name: str, defaults: dict[str, object] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if defaults is not None:
        (folder / "philip_defaults.json").write_text(json.dumps(defaults))
    return folder


def test_each_rule_and_its_order(tmp_path: Path) -> None:
    base = _folder(tmp_path, "sdxl-base")
    assert detect_variant(base) == Variant()
    turbo = detect_variant(_folder(tmp_path / "models--stabilityai--sdxl-turbo" / "snapshots", "0123abc"))
    assert turbo.name == "turbo" and "model folder name" in turbo.rule
    lightning = detect_variant(base, unet_path="/w/sdxl_lightning_8step_unet.safetensors")
    assert (lightning.name, lightning.steps) == ("lightning", 8) and lightning.rule.startswith("PHILIP_UNET_PATH")
    assert detect_variant(base, base_lora="/w/sdxl_lightning_4step_lora.safetensors").rule.startswith(
        "PHILIP_BASE_LORA")
    # The folder's own word wins over every name, even a base model's "" over a Turbo-looking folder.
    declared = detect_variant(_folder(tmp_path, "my-turbo", {"variant": ""}), unet_path="/w/x_4step.safetensors")
    assert declared.name == "" and "variant ''" in declared.rule
    assert detect_variant(_folder(tmp_path, "plain", {"variant": "lightning"})).name == "lightning"
    with pytest.raises(ValueError, match="variant must be one of turbo, lightning or empty"):
        detect_variant(_folder(tmp_path, "bad", {"variant": "hyper"}))


def test_built_in_rows_of_the_variants() -> None:
    turbo, source = generation_defaults("/nowhere", SDXL, Variant("turbo"))
    assert source == "built-in (SDXL-Turbo)"
    assert (turbo.steps, turbo.min_steps, turbo.max_steps, turbo.guidance, turbo.scheduler) == (4, 1, 4, 0.0, "euler_a")
    assert (turbo.timestep_spacing, turbo.native_size, turbo.max_size) == ("trailing", 512, 768)
    lightning, source = generation_defaults("/nowhere", SDXL, Variant("lightning", steps=8))
    assert source == "built-in (SDXL-Lightning (8-step))"
    assert (lightning.steps, lightning.guidance, lightning.scheduler, lightning.timestep_spacing,
            lightning.native_size) == (8, 0.0, "euler", "trailing", 1024)
    sd_turbo, source = generation_defaults("/nowhere", SD, Variant("turbo"))
    assert source == "built-in (SD-Turbo)" and sd_turbo.native_size == 0  # SD-Turbo's UNet says 512
    # SD-1.x has no Lightning row: its own, as always.
    assert generation_defaults("/nowhere", SD, Variant("lightning"))[0] == GenerationDefaults()


def test_a_folder_table_over_a_variant_row_keeps_its_ranges(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "t", {"variant": "turbo", "generation": {"steps": 2}})
    defaults, _ = generation_defaults(folder, SDXL, detect_variant(folder))
    assert (defaults.steps, defaults.max_steps, defaults.max_size) == (2, 4, 768)
    (folder / "philip_defaults.json").write_text(json.dumps({"variant": "turbo", "generation": {"steps": 6}}))
    with pytest.raises(ValueError, match="min_steps <= steps <= max_steps, got 6"):
        generation_defaults(folder, SDXL, detect_variant(folder))
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        GenerationDefaults(timestep_spacing="sideways")
    with pytest.raises(ValueError, match="native_size must be a multiple of 8 in 8-768"):
        GenerationDefaults(native_size=1024, max_size=768)


@pytest.mark.parametrize(("params", "field", "why"), [
    ({"width": 776, "height": 512}, "width", "width must be a multiple of 8 in 8-768 \\(this model's max_size"),
    ({"width": 512, "height": 1024}, "height", "8-768"),
    ({"steps": 5}, "steps", "steps must be in 1-4 \\(0 = default 4\\); got 5"),
])
def test_requests_past_a_models_limits_are_refused_naming_them(params: dict[str, int], field: str, why: str) -> None:
    turbo, _ = generation_defaults("/nowhere", SDXL, Variant("turbo"))
    resolver = RequestResolver(native_size=512, schedulers=SCHEDULERS, defaults=turbo)
    with pytest.raises(InvalidArgument, match=why) as caught:
        resolver.resolve(GenerationParams(prompt="a circle", **params))  # type: ignore[arg-type]
    assert caught.value.field == field
    ok = resolver.resolve(GenerationParams(prompt="a circle", width=768, height=512, steps=1))
    assert (ok.width, ok.steps, ok.guidance, ok.scheduler) == (768, 1, 0.0, "euler_a")


def test_sd1_keeps_todays_limits() -> None:
    resolver = RequestResolver(native_size=64, schedulers=SCHEDULERS)
    assert resolver.resolve(GenerationParams(prompt="a", width=1024, height=1024, steps=100)).width == 1024
    with pytest.raises(InvalidArgument, match="8-1024"):
        resolver.resolve(GenerationParams(prompt="a", width=1032, height=64))
