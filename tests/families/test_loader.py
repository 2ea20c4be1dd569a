"""The loader picks the pipeline class from model_index.json (SD-1.x, SDXL, SD3, Flux), refuses unknown folders by
name, loads in PHILIP_DTYPE, and keeps a force_upcast VAE in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from philip.models.families import FLUX, SD, SD3, SDXL, ModelLoadError, detect_family, family_of
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


def test_sd3_and_flux_folders_load_as_their_families(sd3_dir: Path, flux_dir: Path) -> None:
    assert detect_family(sd3_dir) is SD3 and detect_family(flux_dir) is FLUX
    sd3, flux = load_pipeline(sd3_dir), load_pipeline(flux_dir)
    assert type(sd3) is StableDiffusion3Pipeline and family_of(sd3) is SD3 and sd3.text_encoder_3 is not None
    assert type(flux) is FluxPipeline and family_of(flux) is FLUX and flux.text_encoder_2 is not None
    assert flux.vae.config.latent_channels == 16 and flux.vae.config.shift_factor is not None


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


async def test_serve_all_refuses_an_unknown_folder_at_start_up(tmp_path: Path) -> None:
    settings = Settings(model_dir=str(index_only(tmp_path / "kandinsky", "KandinskyV22Pipeline")), port=0,
                        http_port=0, adapters_dir=str(tmp_path / "adapters"))
    with pytest.raises(ModelLoadError, match="unknown pipeline class 'KandinskyV22Pipeline'"):
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
