"""Weights loaded over a model folder's own: a replacement UNet (``PHILIP_UNET_PATH``) and a LoRA fused into the
base (``PHILIP_BASE_LORA``). SDXL-Lightning ships both kinds for an SDXL base folder: a UNet-only
``sdxl_lightning_4step_unet.safetensors`` and ``sdxl_lightning_4step_lora.safetensors``.

Every failure is a :class:`~philip.models.families.ModelLoadError` naming the setting, at start-up."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from philip.logs import get_logger
from philip.models.families import ModelLoadError

log = get_logger("philip.models.checkpoints")
BASE_LORA_NAME = "philip_base"  # the fused LoRA's adapter name, unloaded right after the fuse
_SHOWN_KEYS = 3  # keys named in a mismatch message


def load_unet(unet_path: str, model_dir: str | Path, dtype: torch.dtype) -> Any:
    """The UNet at ``unet_path``: a diffusers folder (its ``config.json``, or a ``unet/`` inside it), or one
    ``.safetensors`` file of a UNet shaped like the model folder's own (its ``unet/config.json``), loaded strictly."""
    path = Path(unet_path)
    if not (Path(model_dir) / "unet").is_dir():  # SD3 and Flux have a transformer/ instead
        raise ModelLoadError(f"PHILIP_UNET_PATH={unet_path}: {model_dir} has no unet/ to replace; the setting is for "
                             "UNet models (SD-1.x/2.x, SDXL)")
    if path.is_dir():
        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        try:
            unet = UNet2DConditionModel.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"PHILIP_UNET_PATH={unet_path}: not a diffusers UNet folder ({exc})") from None
    elif path.is_file() and path.suffix == ".safetensors":
        unet = _unet_from_file(path, Path(model_dir) / "unet", dtype)
    else:
        raise ModelLoadError(f"PHILIP_UNET_PATH={unet_path}: no such UNet folder or .safetensors file")
    log.info("model.unet_loaded", path=str(path), params=sum(p.numel() for p in unet.parameters()))
    return unet


def _unet_from_file(path: Path, config_dir: Path, dtype: torch.dtype) -> Any:
    from safetensors.torch import load_file

    if not (config_dir / "config.json").is_file():
        raise ModelLoadError(f"PHILIP_UNET_PATH={path}: a single-file UNet takes its shape from the model folder's "
                             f"unet/config.json, and {config_dir} has none")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        raise ModelLoadError(f"PHILIP_UNET_PATH={path}: unreadable safetensors file ({exc})") from None
    with torch.device("meta"):  # no random init of billions of weights: the file's tensors take their place
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir)))
    expected = set(unet.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"PHILIP_UNET_PATH={path}: its weights do not fit the model folder's UNet ({config_dir}/config.json): "
            f"{len(missing)} missing (e.g. {missing[:_SHOWN_KEYS]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:_SHOWN_KEYS]}); is it a UNet for this base model?")
    try:
        unet.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # same names, other shapes
        raise ModelLoadError(f"PHILIP_UNET_PATH={path}: its weights do not fit the model folder's UNet "
                             f"({str(exc).splitlines()[-1].strip()})") from None
    if any(t.is_meta for t in itertools.chain(unet.parameters(), unet.buffers())):
        raise ModelLoadError(f"PHILIP_UNET_PATH={path}: some UNet tensors were left without weights")
    return unet.to(dtype).eval()


def fuse_base_lora(pipe: Any, lora_path: str, scale: float) -> None:
    """Fuse the LoRA (a folder with ``pytorch_lora_weights.safetensors``, or one ``.safetensors`` file) into the
    base weights at ``scale``, then drop its layers: requests' adapters (philip/models/adapters.py) then load,
    switch and unload over the fused base as over any other."""
    path = Path(lora_path)
    if not (path.is_dir() or (path.is_file() and path.suffix == ".safetensors")):
        raise ModelLoadError(f"PHILIP_BASE_LORA={lora_path}: no such LoRA folder or .safetensors file")
    source = {"pretrained_model_name_or_path_or_dict": str(path)} if path.is_dir() else {
        "pretrained_model_name_or_path_or_dict": str(path.parent), "weight_name": path.name}
    try:
        pipe.load_lora_weights(**source, adapter_name=BASE_LORA_NAME, local_files_only=True)
        pipe.fuse_lora(lora_scale=scale, adapter_names=[BASE_LORA_NAME])
        pipe.unload_lora_weights()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"PHILIP_BASE_LORA={lora_path}: cannot fuse it into this model ({exc})") from None
    log.info("model.base_lora_fused", path=str(path), scale=scale)


__all__ = ["BASE_LORA_NAME", "fuse_base_lora", "load_unet"]
