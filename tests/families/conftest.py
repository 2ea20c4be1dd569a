"""Tiny random-weight folders of every served family (scripts/make_tiny_families.py), built once per session.

Random weights prove shapes and wiring only: nothing here judges what an image looks like."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_tiny_families.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_tiny_families", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared: keep torch to one core


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"sd1": folder, "sdxl": folder, "sd3": folder, "flux": folder}`` (a few seconds)."""
    folders: dict[str, Path] = _script().make_tiny_families(tmp_path_factory.mktemp("families"))
    return folders


@pytest.fixture(scope="session")
def sdxl_dir(tiny_families: dict[str, Path]) -> Path:
    return tiny_families["sdxl"]


@pytest.fixture(scope="session")
def sd1_dir(tiny_families: dict[str, Path]) -> Path:
    return tiny_families["sd1"]


@pytest.fixture(scope="session")
def sd3_dir(tiny_families: dict[str, Path]) -> Path:
    return tiny_families["sd3"]


@pytest.fixture(scope="session")
def flux_dir(tiny_families: dict[str, Path]) -> Path:
    return tiny_families["flux"]


def index_only(folder: Path, class_name: object) -> Path:
    """A folder holding only a model_index.json naming ``class_name`` (what SD3/Flux/unknown refusals need)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder
