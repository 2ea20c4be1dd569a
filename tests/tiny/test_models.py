"""The shipped weights load through plain diffusers / onnxruntime and produce sane output."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from philip.models.upscaler import OnnxUpscaler
from philip.tiny.dataset import ShapeSpec, render
from philip.tiny.measure import measure

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "philip-tiny"
UPSCALER = ROOT / "models" / "philip-tiny-x4.onnx"


def test_plain_diffusers_loads_the_folder_offline() -> None:
    code = (
        "from diffusers import StableDiffusionPipeline\n"
        f"p = StableDiffusionPipeline.from_pretrained({str(MODEL)!r})\n"
        "print(type(p.unet).__name__, type(p.scheduler).__name__, p.tokenizer.model_max_length)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "UNet2DConditionModel DPMSolverMultistepScheduler" in out.stdout


def test_unet_blocks_have_self_and_cross_attention() -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(MODEL / "unet")
    names = [n for n, _ in unet.attn_processors.items()]
    assert any("attn1" in n for n in names) and any("attn2" in n for n in names)


def test_one_short_generation_draws_the_prompt() -> None:
    from philip.models.pipelines import load_pipeline

    torch.set_num_threads(2)
    pipe = load_pipeline(MODEL)
    prompts = ["a red square on a yellow background", "a blue circle on a white background"]
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    images = pipe(prompts, num_inference_steps=8, guidance_scale=5.0, generator=gens).images
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    measured = [measure(im) for im in images]
    # The judge is exact on renders; a trained model gets at least the backgrounds right.
    assert [m.bg for m in measured] == ["yellow", "white"]


def test_upscaler_output_shape_and_range() -> None:
    up = OnnxUpscaler(UPSCALER)
    assert up.scale == 4
    img = render(ShapeSpec("circle", "red", "blue", 0.6, 0.5, 0.5))
    out = up.upscale(img)
    assert out.size == (256, 256)
    arr = np.asarray(out)
    assert arr.dtype == np.uint8 and arr.min() >= 0 and arr.max() <= 255
    small = measure(out.resize((64, 64), Image.Resampling.BOX))
    assert (small.fg, small.bg, small.shape) == ("red", "blue", "circle")


def test_any_onnx_sr_model_with_static_shapes(tmp_path: Path) -> None:
    """Scale is read from a static model's shapes (e.g. a Real-ESRGAN export); tiles cover any size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    graph = helper.make_graph([node], "x2", [x], [y], initializer=[scales])
    path = tmp_path / "x2.onnx"
    # IR 8 pins the file format so any onnxruntime of the last years reads it (newer onnx defaults newer).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    up = OnnxUpscaler(path)
    assert up.scale == 2
    seen: list[tuple[int, int]] = []
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    out = up.upscale(Image.fromarray(pixels), progress=lambda d, t: seen.append((d, t)))
    assert out.size == (40, 24)
    # 8-px windows keep a 4-px core: 3 x 5 tiles, and nearest x2 must come back exactly
    assert seen[-1] == (15, 15) and len(seen) == 15
    expected = pixels.repeat(2, axis=0).repeat(2, axis=1)
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 1


def test_missing_upscaler_is_a_clear_error(tmp_path: Path) -> None:
    from philip.models.upscaler import UpscalerError

    with pytest.raises(UpscalerError, match="not found"):
        OnnxUpscaler(tmp_path / "nope.onnx")
