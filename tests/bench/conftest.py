"""The benches' toy model: philip-tiny's architecture at toy sizes with (nearly) random weights, trained
once per test run. It proves wiring and report shapes only; no bench test claims quality from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from philip.tiny.train import TinyTrainConfig, train_tiny


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-model")
    cfg = TinyTrainConfig(
        out_dir=root / "model", work_dir=root / "work", vae_steps=2, vae_batch=4, pool_size=32, steps=2, batch=4,
        unet_channels=(32, 32, 32), text_hidden=32, text_layers=1, threads=1,
    )
    train_tiny(cfg)
    torch.set_num_threads(1)
    return cfg.out_dir
