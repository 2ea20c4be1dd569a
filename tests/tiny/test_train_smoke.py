"""A few-step run on tiny sizes: the training code runs, exports, and resumes."""

import json
from pathlib import Path

from philip.tiny.train import TinyTrainConfig, train_tiny


def _cfg(tmp: Path, steps: int) -> TinyTrainConfig:
    return TinyTrainConfig(
        out_dir=tmp / "out", work_dir=tmp / "work", vae_steps=2, vae_batch=4, pool_size=32, steps=steps,
        batch=4, checkpoint_every=2, unet_channels=(32, 32, 32), text_hidden=32, text_layers=1, threads=1,
    )


def test_train_export_and_resume(tmp_path: Path) -> None:
    train_tiny(_cfg(tmp_path, 2))
    train_tiny(_cfg(tmp_path, 4))  # resumes at step 2, not from scratch
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log].count("done") == 2
    assert {"stage": "resume", "step": 2} in [{k: r.get(k) for k in ("stage", "step")} for r in log]
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "out" / sub).is_dir()
    assert (tmp_path / "out" / "model_index.json").is_file()
    assert list((tmp_path / "out" / "unet").glob("*.safetensors"))
