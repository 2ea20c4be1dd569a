"""The loader picks the pipeline class from model_index.json, refuses SD3/Flux/unknown folders by name, loads in
PHILIP_DTYPE, and keeps a force_upcast VAE in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from philip.models.families import SD, SDXL, ModelLoadError, detect_family, family_of
from philip.models.pipelines import load_pipeline, native_size, torch_dtype
from philip.previews import decode_latents
from philip.settings import Settings
from services.app import serve
from tests.families.conftest import REPO, index_only


def test_each_folder_loads_as_its_family(sd1_dir: Path, sdxl_dir: Path) -> None:
    sd1, sdxl = load_pipeline(sd1_dir), load_pipeline(sdxl_dir)
    assert type(sd1) is StableDiffusionPipeline and family_of(sd1) is SD
    assert type(sdxl) is StableDiffusionXLPipeline and family_of(sdxl) is SDXL
    # Nothing of SDXL is dropped: both encoders and tokenizers, the text_time UNet.
    assert sdxl.text_encoder_2 is not None and sdxl.tokenizer_2 is not None
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert native_size(sd1) == native_size(sdxl) == 64
    assert detect_family(REPO / "models" / "philip-tiny") is SD


@pytest.mark.parametrize(("class_name", "family"), [("StableDiffusion3Pipeline", "Stable Diffusion 3"),
                                                     ("FluxPipeline", "Flux")])
def test_sd3_and_flux_are_refused_by_name(tmp_path: Path, class_name: str, family: str) -> None:
    folder = index_only(tmp_path / "model", class_name)
    with pytest.raises(ModelLoadError, match=f"is a {family} model .*{family} is not supported yet"):
        load_pipeline(folder)


@pytest.mark.parametrize(("class_name", "why"), [
    ("KandinskyV22Pipeline", "unknown pipeline class 'KandinskyV22Pipeline'; PHiLIP serves StableDiffusionPipeline"),
    (None, "unknown pipeline class None"),
    (7, "unknown pipeline class 7"),
])
def test_unknown_classes_are_refused(tmp_path: Path, class_name: object, why: str) -> None:
    with pytest.raises(ModelLoadError, match=why):
        load_pipeline(index_only(tmp_path / "model", class_name))


def test_missing_and_broken_indexes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a diffusers model index"):
        load_pipeline(tmp_path)


async def test_serve_all_refuses_a_flux_folder_at_start_up(tmp_path: Path) -> None:
    settings = Settings(model_dir=str(index_only(tmp_path / "flux", "FluxPipeline")), port=0, http_port=0,
                        adapters_dir=str(tmp_path / "adapters"))
    with pytest.raises(ModelLoadError, match="Flux is not supported yet"):
        await serve("all", settings)


def test_dtype_names() -> None:
    assert torch_dtype("", "cpu") is torch.float32 and torch_dtype(None, "cuda:1") is torch.float16
    assert torch_dtype("BF16", "cpu") is torch.bfloat16 and torch_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ValueError, match="fp16, bf16, fp32"):
        torch_dtype("int8", "cpu")
    assert Settings.from_env({"PHILIP_DTYPE": "fp32"}).models.dtype == "fp32"
    assert Settings().models.dtype == ""
    with pytest.raises(ValueError, match="PHILIP_DTYPE='half': must be one of fp16, bf16, fp32"):
        Settings.from_env({"PHILIP_DTYPE": "half"})


def test_a_force_upcast_vae_decodes_in_fp32(sd1_dir: Path, sdxl_dir: Path) -> None:
    sdxl = load_pipeline(sdxl_dir, dtype="bf16")  # bf16 runs on a CPU; fp16 would behave the same way
    assert sdxl.unet.dtype is torch.bfloat16 and sdxl.text_encoder_2.dtype is torch.bfloat16
    assert sdxl.vae.config.force_upcast and sdxl.vae.dtype is torch.float32
    images = decode_latents(sdxl, torch.randn(1, 4, 16, 16, dtype=torch.bfloat16))
    assert images[0].size == (64, 64)
    sd1 = load_pipeline(sd1_dir, dtype="bf16")  # its VAE does not ask for the upcast
    assert not sd1.vae.config.force_upcast and sd1.vae.dtype is torch.bfloat16


def test_training_refuses_sdxl_clearly_for_now(sdxl_dir: Path, tmp_path: Path) -> None:
    from services.personalizer.trainer import AdapterTrainer, TrainConfig

    with pytest.raises(ValueError, match="training adapters on SDXL models is not supported yet"):
        AdapterTrainer(sdxl_dir, TrainConfig(token="sks", class_word="shape"), [], tmp_path)
