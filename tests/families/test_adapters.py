"""Adapters on every family: train a few steps, export in the family's diffusers format, reload through the
AdapterSwitch the generator and refiner use, and see the generated output change; what a family cannot train is
refused when the job is asked for.

Random weights and a handful of steps (a high learning rate so the change is plain): wiring only, no quality claim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from philip.evals.personalize import reference_images
from philip.images import png_bytes
from philip.models.adapters import EMBEDS_FILE, LORA_FILE, AdapterError, AdapterSwitch
from philip.models.conditioning import prompt_kwargs
from philip.models.families import FLUX, SD, SD3, SDXL, Family, GenerationDefaults
from philip.models.model_info import describe_model
from philip.models.pipelines import denoiser_model, load_pipeline
from philip.models.variants import Variant
from philip.rpc.errors import InvalidArgument
from philip.settings import Settings
from philip.store import MemoryStore
from services.personalizer import trainer as trainer_module
from services.personalizer.records import JOB_KIND, TOKEN_KIND
from services.personalizer.requests import AdapterRequest
from services.personalizer.server import open_personalizer
from services.personalizer.trainer import AdapterTrainer, TrainConfig, TrainingStopped, frozen_dtype

REFS = reference_images(4)
LORA_ID, TI_ID = "ad_000000000000000a", "ad_000000000000000b"


def train(model_dir: Path, adapters: Path, adapter_id: str, method: str) -> AdapterTrainer:
    cfg = TrainConfig(token="sks", class_word="shape", method=method, steps=3, batch=2, lr=5e-2, embedding_lr=0.5,
                      checkpoint_every=100, preview_every=0)
    trainer = AdapterTrainer(model_dir, cfg, REFS, adapters / ".jobs" / adapter_id)
    trainer.run(lambda progress: None)
    trainer.export(adapters / adapter_id, adapter_id)
    return trainer


def draw(pipe: object) -> np.ndarray:
    """One image, the prompt encoded as the generator and refiner encode it (after their switch activated)."""
    out = pipe(**prompt_kwargs(pipe, ["a sks on a blue background"], [""]),  # type: ignore[operator]
               num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(1))
    return np.asarray(out.images[0])


def assert_switches(pipe: object, switch: AdapterSwitch, adapter_id: str) -> None:
    """The adapter changes the image; switching it off restores the base model's exactly."""
    base = draw(pipe)
    switch.activate((adapter_id,))
    assert np.abs(draw(pipe) - base).max() > 1e-3
    switch.activate(())
    np.testing.assert_array_equal(draw(pipe), base)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_lora_trains_exports_and_changes_the_output(family: str, tiny_families: dict[str, Path],
                                                    tmp_path: Path) -> None:
    trained = train(tiny_families[family], tmp_path, LORA_ID, "lora")._lora_state()
    state = load_file(str(tmp_path / LORA_ID / LORA_FILE))
    prefix = "unet." if family == "sdxl" else "transformer."  # the family's diffusers LoRA layout
    assert state and all(key.startswith(prefix) for key in state)
    assert any(".to_q.lora_A." in key for key in state) and not any(".ff." in key for key in state)
    assert (tmp_path / LORA_ID / EMBEDS_FILE).is_file() == (family == "sdxl")  # SD3/Flux: LoRA only
    pipe = load_pipeline(tiny_families[family])
    assert_switches(pipe, AdapterSwitch(pipe, tmp_path), LORA_ID)
    loaded = get_peft_model_state_dict(denoiser_model(pipe), adapter_name=LORA_ID)
    assert sorted(loaded) == sorted(trained)  # every trained layer came back, none skipped by the loader
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_sdxl_textual_inversion_puts_the_token_into_both_encoders(sdxl_dir: Path, tmp_path: Path) -> None:
    trainer = train(sdxl_dir, tmp_path, TI_ID, "textual_inversion")
    assert all(len(t.tokenize("sks")) == 1 for t in (trainer.pipe.tokenizer, trainer.pipe.tokenizer_2))
    embeds = load_file(str(tmp_path / TI_ID / EMBEDS_FILE))
    assert {k: tuple(v.shape) for k, v in embeds.items()} == {"clip_l": (1, 16), "clip_g": (1, 32)}
    pipe = load_pipeline(sdxl_dir)
    switch = AdapterSwitch(pipe, tmp_path)
    assert_switches(pipe, switch, TI_ID)
    switch.activate((TI_ID,))
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        assert "sks" in tokenizer.get_added_vocab()
        row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("sks")]
        torch.testing.assert_close(row, embeds[key][0])
    switch.activate(())
    assert "sks" not in pipe.tokenizer.get_added_vocab() and "sks" not in pipe.tokenizer_2.get_added_vocab()


def test_sdxl_resume_restores_both_token_rows_exactly(sdxl_dir: Path, tmp_path: Path) -> None:
    def trainer(work: Path) -> AdapterTrainer:
        cfg = TrainConfig(token="sks", class_word="shape", steps=4, batch=2, checkpoint_every=2, preview_every=0)
        return AdapterTrainer(sdxl_dir, cfg, REFS, work)

    straight = trainer(tmp_path / "a")
    straight.run(lambda progress: None)
    interrupted = trainer(tmp_path / "b")
    with pytest.raises(TrainingStopped):
        interrupted.run(lambda progress: None, should_stop=lambda: interrupted.step >= 3)  # checkpoint at 2
    resumed = trainer(tmp_path / "b")
    resumed.run(lambda progress: None)
    assert resumed.step == 4
    for a, b in zip(straight.tokens, resumed.tokens, strict=True):
        torch.testing.assert_close(b.row, a.row)
    for key, value in straight._lora_state().items():
        torch.testing.assert_close(resumed._lora_state()[key], value, msg=key)


def test_flow_families_train_on_bf16_frozen_weights_with_fp32_lora(flux_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU gets for SD3/Flux (frozen weights in bf16 so Flux fits 48-64 GiB), run here on the CPU."""
    assert frozen_dtype(FLUX, "cuda:0") is torch.bfloat16 and frozen_dtype(SD3, "cuda") is torch.bfloat16
    assert frozen_dtype(SDXL, "cuda") is torch.float32 and frozen_dtype(FLUX, "cpu") is torch.float32
    monkeypatch.setattr(trainer_module, "frozen_dtype", lambda family, device: torch.bfloat16)
    trainer = train(flux_dir, tmp_path, LORA_ID, "lora")
    assert trainer.denoiser.dtype is torch.bfloat16 and {p.dtype for p in trainer.lora_params} == {torch.float32}
    state = load_file(str(tmp_path / LORA_ID / LORA_FILE))
    assert {v.dtype for v in state.values()} == {torch.float32}
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if "lora_B" in k)  # it learned


def test_an_adapter_of_another_family_is_refused_by_name(sd1_dir: Path, sd3_dir: Path, tmp_path: Path) -> None:
    train(sd3_dir, tmp_path, LORA_ID, "lora")
    switch = AdapterSwitch(load_pipeline(sd1_dir), tmp_path)
    with pytest.raises(AdapterError, match=r"trained on a Stable Diffusion 3 model; this server serves SD-1\.x"):
        switch.activate((LORA_ID,))


@pytest.mark.parametrize("family", [SD3, FLUX], ids=["sd3", "flux"])
async def test_textual_inversion_on_a_t5_family_is_refused_at_creation(family: Family, tiny_families: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    request = AdapterRequest(tuple(png_bytes(image) for image in REFS), "sks", "shape", "textual_inversion")
    settings = Settings.from_env({"PHILIP_MODEL_DIR": str(tiny_families[family.name]),
                                  "PHILIP_ADAPTERS_DIR": str(tmp_path)})
    async with MemoryStore() as store:
        personalizer = open_personalizer(settings, store)  # what the service starts with: the folder's family
        assert personalizer.family is family
        with pytest.raises(InvalidArgument, match=f"TEXTUAL_INVERSION is not available on {family.label} models.*"
                                                  "T5 encoder.*use LORA instead"):
            await personalizer.create(request)
        assert not await store.list_records(JOB_KIND) and not await store.list_records(TOKEN_KIND)  # nothing held


def test_the_trainer_refuses_the_same_before_loading_anything(flux_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TEXTUAL_INVERSION is not available on Flux models"):
        AdapterTrainer(flux_dir, TrainConfig(token="sks", class_word="shape", method="textual_inversion"), [],
                       tmp_path)


def test_model_info_offers_what_each_family_trains() -> None:
    both = ("lora", "textual_inversion")
    for family, methods in ((SD, both), (SDXL, both), (SD3, ("lora",)), (FLUX, ("lora",))):
        info = describe_model(family, Variant(), "fp32", GenerationDefaults(), ())
        assert info.adapter_methods == methods, family.name


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_step(tiny_families: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """A device that runs out of memory above 2 samples a pass: the step is redone in micro-batches of 2, leaving
    no trace of the failed pass (it lands exactly where a trainer that used micro-batches of 2 from the start
    lands), and later steps keep the size that fitted."""
    cfg = TrainConfig(token="sks", class_word="shape", method="lora", steps=2, batch=4, lr=5e-2,
                      checkpoint_every=100, preview_every=0)
    halved = AdapterTrainer(tiny_families["sdxl"], cfg, REFS, tmp_path / "halved")
    planned = AdapterTrainer(tiny_families["sdxl"], cfg, REFS, tmp_path / "planned")
    planned.micro_batch = 2
    real_loss, passes = halved.recipe.loss, []

    def loss_on_a_small_device(z0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        passes.append(z0.shape[0])
        if z0.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: 2 samples a pass fit")
        return real_loss(z0, g)

    halved.recipe.loss = loss_on_a_small_device  # type: ignore[method-assign]
    losses = [(halved.train_step(), planned.train_step()) for _ in range(2)]
    assert passes == [4, 2, 2, 2, 2] and halved.micro_batch == 2
    assert all(a == b for a, b in losses)
    for a, b in zip(halved.lora_params, planned.lora_params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
