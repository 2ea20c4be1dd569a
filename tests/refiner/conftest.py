"""Shared fixtures for the refiner tests: one tiny random-weight SD pipeline per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from philip.models.pipelines import load_pipeline
from philip.tiny.train import TinyTrainConfig, train_tiny

torch.set_num_threads(1)  # a training job shares this machine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A philip-tiny model folder trained for a couple of steps (random-ish weights, 128 px)."""
    tmp: Path = tmp_path_factory.mktemp("refiner-tiny")
    train_tiny(TinyTrainConfig(
        out_dir=tmp / "out", work_dir=tmp / "work", vae_steps=2, vae_batch=4, pool_size=32, steps=2, batch=4,
        unet_channels=(32, 32, 32), text_hidden=32, text_layers=1, threads=1,
    ))
    return tmp / "out"


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir: Path) -> Any:
    return load_pipeline(tiny_model_dir)
