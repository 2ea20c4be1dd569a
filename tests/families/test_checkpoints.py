"""PHILIP_UNET_PATH and PHILIP_BASE_LORA on the tiny SDXL folder: a UNet from one .safetensors file (as
SDXL-Lightning ships it) or a folder, a LoRA fused at load; each refused with a message naming its setting when it
does not fit. Random weights: this proves what loads where, not what the images look like."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from philip.models.checkpoints import BASE_LORA_NAME
from philip.models.families import ModelLoadError
from philip.models.load_options import LoadOptions
from philip.models.pipelines import load_pipeline, make_scheduler, served_defaults
from philip.settings import Settings
from tests.families.checkpoint_support import fresh_unet, save_lora_file, save_unet_file, unet_output


@pytest.fixture(scope="module")
def files(sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("checkpoints")
    folder = out / "unet-folder"
    fresh_unet(sdxl_dir, 2).save_pretrained(str(folder))
    return {"unet": save_unet_file(sdxl_dir, out / "sdxl_lightning_4step_unet.safetensors", 1),
            "short": save_unet_file(sdxl_dir, out / "short.safetensors", 1, drop="mid_block"),
            "folder": folder,
            "lora": save_lora_file(sdxl_dir, out / "sdxl_lightning_4step_lora.safetensors", 3),
            "adapter": save_lora_file(sdxl_dir, out / "adapter" / "pytorch_lora_weights.safetensors", 4)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_unet_file_or_folder_replaces_the_folders(sdxl_dir: Path, files: dict[str, Path]) -> None:
    from_file = load_pipeline(sdxl_dir, options=LoadOptions(unet_path=str(files["unet"])))
    assert _same_weights(from_file.unet, fresh_unet(sdxl_dir, 1))
    assert from_file.unet.config.addition_embed_type == "text_time"  # the folder's own config shaped it
    from_folder = load_pipeline(sdxl_dir, dtype="bf16", options=LoadOptions(unet_path=str(files["folder"])))
    assert from_folder.unet.dtype is torch.bfloat16
    assert not _same_weights(from_folder.unet.float(), from_file.unet)


@pytest.mark.parametrize(("name", "why"), [
    ("short", "PHILIP_UNET_PATH=.*short.safetensors: its weights do not fit the model folder's UNet .* missing"),
    ("missing", "PHILIP_UNET_PATH=.*: no such UNet folder or .safetensors file"),
    ("lora", "PHILIP_UNET_PATH=.*: its weights do not fit .* unexpected"),  # a LoRA is no UNet
])
def test_a_unet_that_does_not_fit_is_refused_by_name(sdxl_dir: Path, files: dict[str, Path], tmp_path: Path,
                                                     name: str, why: str) -> None:
    path = files.get(name, tmp_path / "nothing.safetensors")
    with pytest.raises(ModelLoadError, match=why):
        load_pipeline(sdxl_dir, options=LoadOptions(unet_path=str(path)))


def test_a_base_lora_is_fused_and_adapters_still_switch(sdxl_dir: Path, files: dict[str, Path]) -> None:
    plain = unet_output(load_pipeline(sdxl_dir))
    pipe = load_pipeline(sdxl_dir, options=LoadOptions(base_lora=str(files["lora"]), base_lora_scale=1.0))
    fused = unet_output(pipe)
    assert not torch.allclose(plain, fused, atol=1e-4)  # the LoRA is in the weights...
    assert BASE_LORA_NAME not in pipe.get_list_adapters().get("unet", [])  # ...and its layers are gone
    half = load_pipeline(sdxl_dir, options=LoadOptions(base_lora=str(files["lora"]), base_lora_scale=0.5))
    assert not torch.allclose(unet_output(half), fused, atol=1e-4)
    # What philip/models/adapters.py does per request: load, switch on, switch off over the fused base.
    pipe.load_lora_weights(str(files["adapter"].parent), adapter_name="ad_1")
    pipe.set_adapters(["ad_1"], adapter_weights=[1.0])
    assert not torch.allclose(unet_output(pipe), fused, atol=1e-4)
    pipe.disable_lora()
    assert torch.allclose(unet_output(pipe), fused, atol=1e-5)


def test_a_bad_base_lora_is_refused_by_name(sdxl_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"PHILIP_BASE_LORA=.*: no such LoRA folder or \.safetensors file"):
        load_pipeline(sdxl_dir, options=LoadOptions(base_lora=str(tmp_path / "nothing.safetensors")))
    with pytest.raises(ModelLoadError, match=r"PHILIP_BASE_LORA=.*lightning_4step_unet\.safetensors: cannot fuse"):
        load_pipeline(sdxl_dir, options=LoadOptions(base_lora=str(files["unet"])))  # a UNet is no LoRA


def test_lightning_files_pick_lightning_defaults_and_trailing_steps(sdxl_dir: Path, files: dict[str, Path]) -> None:
    options = LoadOptions(unet_path=str(files["unet"]))
    pipe = load_pipeline(sdxl_dir, options=options)
    defaults = served_defaults(sdxl_dir, pipe, options)
    assert (defaults.steps, defaults.guidance, defaults.scheduler, defaults.timestep_spacing) == (4, 0.0, "euler",
                                                                                                  "trailing")
    scheduler = make_scheduler(pipe, "euler")
    scheduler.set_timesteps(4)
    assert scheduler.config.timestep_spacing == "trailing" and int(scheduler.timesteps[0]) == 999  # pure noise first
    assert make_scheduler(pipe, "euler", timestep_spacing="leading").config.timestep_spacing == "leading"


def test_the_settings_reach_the_load_options() -> None:
    env = {"PHILIP_UNET_PATH": "/m/unet.safetensors", "PHILIP_BASE_LORA": "/m/l.safetensors",
           "PHILIP_BASE_LORA_SCALE": "0.75"}
    assert LoadOptions.from_settings(Settings.from_env(env).models) == LoadOptions(
        unet_path="/m/unet.safetensors", base_lora="/m/l.safetensors", base_lora_scale=0.75)
    with pytest.raises(ValueError, match="PHILIP_BASE_LORA_SCALE"):
        Settings.from_env({"PHILIP_BASE_LORA_SCALE": "9"})
