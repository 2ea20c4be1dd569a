"""Generation defaults per model: the folder's `generation` table, else its family's built-in row; philip-tiny's
are what they always were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from philip.generation.requests import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenerationParams, RequestResolver
from philip.models.families import SD, SDXL, GenerationDefaults, generation_defaults
from tests.families.conftest import REPO

SCHEDULERS = ("dpm++", "euler")


def test_built_in_rows() -> None:
    sdxl, source = generation_defaults(Path("/nonexistent"), SDXL)
    assert (sdxl.native_size, sdxl.guidance) == (1024, 5.0) and source == "built-in (SDXL)"
    tiny, source = generation_defaults(REPO / "models" / "philip-tiny", SD)  # its file has no generation table
    assert tiny == GenerationDefaults() and source == "built-in (SD-1.x/2.x)"
    assert (tiny.steps, tiny.guidance, tiny.scheduler, tiny.native_size) == (DEFAULT_STEPS, DEFAULT_GUIDANCE,
                                                                             "dpm++", 0)


def test_the_folder_table_wins(tmp_path: Path) -> None:
    (tmp_path / "philip_defaults.json").write_text(json.dumps(
        {"weights": {"explore": 1.0}, "generation": {"steps": 4, "guidance": 0, "native_size": 512}}))
    defaults, source = generation_defaults(tmp_path, SDXL)
    assert defaults == GenerationDefaults(steps=4, guidance=0.0, scheduler="dpm++", native_size=512)
    assert source.endswith("philip_defaults.json")


@pytest.mark.parametrize(("table", "why"), [
    ({"stpes": 4}, "unknown generation defaults \\['stpes'\\]"),
    ({"steps": 0}, "steps must be in 1-100"),
    ({"steps": 2.5}, "steps must be an integer, got 2.5"),
    ({"guidance": "high"}, "guidance must be a number"),
    ({"native_size": 1030}, "native_size must be a multiple of 8"),
    ([1, 2], "`generation` must be a table"),
])
def test_bad_tables_fail_naming_the_file(tmp_path: Path, table: object, why: str) -> None:
    (tmp_path / "philip_defaults.json").write_text(json.dumps({"generation": table}))
    with pytest.raises(ValueError, match=why):
        generation_defaults(tmp_path, SDXL)


def test_the_resolver_fills_in_the_model_defaults() -> None:
    sdxl = GenerationDefaults(steps=20, guidance=3.0, scheduler="euler", native_size=1024)
    request = RequestResolver(native_size=1024, schedulers=SCHEDULERS, defaults=sdxl).resolve(
        GenerationParams(prompt="a circle", aspect_ratio="landscape_4_3"))
    assert (request.steps, request.guidance, request.scheduler) == (20, 3.0, "euler")
    assert (request.width, request.height) == (1024, 768)
    plain = RequestResolver(native_size=64, schedulers=SCHEDULERS).resolve(GenerationParams(prompt="a circle"))
    assert (plain.steps, plain.guidance, plain.scheduler, plain.width) == (8, 5.0, "dpm++", 64)
    with pytest.raises(ValueError, match="default scheduler 'lcm'"):
        RequestResolver(native_size=64, schedulers=SCHEDULERS, defaults=GenerationDefaults(scheduler="lcm"))
