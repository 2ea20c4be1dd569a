"""Shared fixtures: a tiny random-weight model (built once per session) and the styles file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STYLES_PATH = REPO / "config" / "styles.toml"


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # The machine is shared with a training run: keep torch to one core.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder with philip-tiny's architecture at toy sizes and random weights (~3 s)."""
    from philip.tiny.train import TinyTrainConfig, train_tiny

    root = tmp_path_factory.mktemp("tiny-model")
    cfg = TinyTrainConfig(
        out_dir=root / "model", work_dir=root / "work", vae_steps=3, vae_batch=4, pool_size=64, steps=4, batch=8,
        checkpoint_every=1000, unet_channels=(32, 32, 32), text_hidden=32, text_layers=1, threads=1,
    )
    train_tiny(cfg)
    torch.set_num_threads(1)
    return cfg.out_dir
