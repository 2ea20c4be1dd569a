"""The trainer and the adapter files: resume is exact, the files load with plain diffusers, and the
switch a generator uses turns an adapter on and fully off again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.utils import get_peft_model_state_dict

from philip.evals.personalize import reference_images
from philip.models.adapters import AdapterError, AdapterSwitch, read_lora_file
from philip.models.pipelines import load_pipeline
from services.personalizer.trainer import AdapterTrainer, TrainConfig, TrainingStopped
from tests.personalizer.conftest import MODEL

REFS = reference_images(4)


def trainer(work: Path, steps: int = 6, method: str = "lora") -> AdapterTrainer:
    cfg = TrainConfig(token="sks", class_word="shape", method=method, steps=steps, checkpoint_every=3,
                      preview_every=0, batch=4)
    return AdapterTrainer(MODEL, cfg, REFS, work)


def state(t: AdapterTrainer) -> dict[str, torch.Tensor]:
    return {"embedding": t.embedding, **t._lora_state()}


def test_resume_after_a_stop_ends_exactly_where_an_uninterrupted_run_does(tmp_path: Path) -> None:
    straight = trainer(tmp_path / "a")
    straight.run(lambda p: None)

    interrupted = trainer(tmp_path / "b")
    with pytest.raises(TrainingStopped):
        interrupted.run(lambda p: None, should_stop=lambda: interrupted.step >= 4)  # checkpoint at 3
    resumed = trainer(tmp_path / "b")  # a new process: only the checkpoint survives
    reports = []
    resumed.run(reports.append)
    assert reports[0].resumed_from == 3 and [r.step for r in reports[1:]] == [4, 5, 6]
    for key, value in state(straight).items():
        torch.testing.assert_close(state(resumed)[key], value, msg=key)


def test_token_known_to_the_model_is_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(token="circle", class_word="shape", steps=1)
    with pytest.raises(ValueError, match="already in the model's vocabulary"):
        AdapterTrainer(MODEL, cfg, REFS, tmp_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    t = trainer(root / "work", steps=30)
    t.run(lambda p: None)
    t.export(root / "ad_00000000000000aa", "ad_00000000000000aa")
    torch.save(t._lora_state(), root / "trained_lora.pt")  # what the files must give back
    return root


def test_files_load_with_plain_diffusers(exported: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), safety_checker=None, local_files_only=True)
    folder = str(exported / "ad_00000000000000aa")
    pipe.load_textual_inversion(folder)
    pipe.load_lora_weights(folder, adapter_name="sks")
    assert "sks" in pipe.tokenizer.get_added_vocab()
    trained = torch.load(exported / "trained_lora.pt")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="sks")
    assert sorted(loaded) == sorted(trained)  # every trained layer, attention projections included
    assert any(".attn1.to_k." in key for key in loaded)
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def _draw(pipe: object) -> np.ndarray:
    out = pipe("a sks on a blue background", num_inference_steps=4, output_type="np",  # type: ignore[operator]
               generator=torch.Generator().manual_seed(1))
    return np.asarray(out.images[0])


def test_switch_turns_an_adapter_on_and_completely_off(exported: Path) -> None:
    pipe = load_pipeline(MODEL)
    switch = AdapterSwitch(pipe, exported)
    base = _draw(pipe)
    switch.activate(("ad_00000000000000aa",))
    adapted = _draw(pipe)
    assert np.abs(adapted - base).max() > 0.05
    switch.activate(())
    np.testing.assert_array_equal(_draw(pipe), base)  # token unloaded, LoRA disabled
    switch.activate(("ad_00000000000000aa",))
    np.testing.assert_allclose(_draw(pipe), adapted, atol=1e-5)  # cached, same result
    with pytest.raises(AdapterError, match="no files"):
        switch.activate(("ad_00000000000000bb",))


def test_adapters_written_in_the_old_mixed_key_format_load_whole(exported: Path) -> None:
    """Files from before 2026-12-02 named attention LoRA the old diffusers way and the rest PEFT's way."""
    import shutil

    from diffusers.utils import convert_state_dict_to_diffusers

    trained = torch.load(exported / "trained_lora.pt")
    old = exported / "ad_00000000000000cc"
    shutil.copytree(exported / "ad_00000000000000aa", old)
    StableDiffusionPipeline.save_lora_weights(str(old), unet_lora_layers=convert_state_dict_to_diffusers(trained),
                                              weight_name="pytorch_lora_weights.safetensors")
    assert not any(".lora.down." in key for key in read_lora_file(old))
    pipe = load_pipeline(MODEL)
    AdapterSwitch(pipe, exported).activate(("ad_00000000000000cc",))
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="ad_00000000000000cc")
    assert sorted(loaded) == sorted(trained)
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
