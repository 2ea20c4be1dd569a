"""PHILIP_FABRIC_LAYERS on the tiny SDXL folder: only the chosen attn1 layers record references and attend to them,
the family picks the default (SDXL: up blocks; SD-1.x: all), and SDXL's up-only FABRIC still changes the images.

The tiny SDXL UNet has 4 attn1 layers: down_blocks.1 (1), mid_block (1), up_blocks.0 (2)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from philip.feedback_weights import FeedbackWeights
from philip.models.conditioning import prompt_kwargs
from philip.models.pipelines import load_pipeline
from philip.settings import Settings
from services.refiner.fabric import FabricAttnProcessor, FabricConditioner
from services.refiner.fabric_layers import chosen_layers, resolve_layers
from services.refiner.rounds import Feedback, FeedbackImage, RoundParams, RoundRunner
from services.refiner.server import open_refiner
from tests.families.conftest import REPO

PARAMS = RoundParams(prompt="a red circle", width=64, height=64, steps=3, guidance=5.0, scheduler="dpm++",
                     num_images=2, seed=30)


@pytest.fixture(scope="module")
def pipe(sdxl_dir: Path) -> Any:
    return load_pipeline(sdxl_dir)


@pytest.mark.parametrize(("choice", "parts", "count"), [
    ("all", {"down_blocks", "mid_block", "up_blocks"}, 4), ("up", {"up_blocks"}, 2),
    ("mid+up", {"mid_block", "up_blocks"}, 3), ("down+mid", {"down_blocks", "mid_block"}, 2)])
def test_only_the_chosen_layers_record_and_inject(pipe: Any, choice: str, parts: set[str], count: int) -> None:
    chosen = chosen_layers(pipe.unet.attn_processors, choice)
    assert {n.split(".")[0] for n in chosen} == parts and len(chosen) == count
    modes: list[dict[str, str]] = []  # per UNet call: the mode of every FABRIC processor installed

    def spy(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        modes.append({n: p.mode for n, p in module.attn_processors.items() if isinstance(p, FabricAttnProcessor)})

    g = torch.Generator().manual_seed(0)
    liked, disliked = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    with FabricConditioner(pipe, liked=liked, disliked=disliked, layers=choice) as fabric:
        hook = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)  # after the conditioner's: sees its modes
        try:
            pipe(**prompt_kwargs(pipe, ["a circle"], [""]), num_inference_steps=2, guidance_scale=5.0, width=64,
                 height=64, output_type="latent")
        finally:
            hook.remove()
        recorded = {n: p.recorded for n, p in fabric.processors.items() if p.recorded is not None}
        assert set(fabric.processors) == set(recorded) == set(chosen)
        assert fabric.stored_bytes == sum(t.numel() * t.element_size() for t in recorded.values())
        assert all(t.shape[0] == 2 for t in recorded.values())  # 1 like + 1 dislike, nothing else kept
    # Each step: the reference pass (record) nested in the main pass's hook, then the main pass (inject).
    assert [set(m.values()) for m in modes] == [{"record"}, {"inject"}] * 2
    assert all(set(m) == set(chosen) for m in modes)
    assert not any(isinstance(p, FabricAttnProcessor) for p in pipe.unet.attn_processors.values())  # restored


def test_a_reference_pass_without_up_layers_stops_before_the_up_blocks_and_changes_nothing(pipe: Any) -> None:
    g = torch.Generator().manual_seed(1)
    liked, disliked = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    up_calls: list[int] = []
    hook = pipe.unet.up_blocks[0].register_forward_hook(
        lambda m, args, kwargs, out: up_calls.append(out.shape[0]), with_kwargs=True)
    latents = []
    try:
        for stop in (True, False):
            with FabricConditioner(pipe, liked=liked, disliked=disliked, layers="down+mid") as fabric:
                for proc in fabric.processors.values():
                    proc.ends_pass = proc.ends_pass and stop
                latents.append(pipe(**prompt_kwargs(pipe, ["a circle", "a square"], ["", ""]), num_inference_steps=2,
                                    guidance_scale=5.0, width=64, height=64, output_type="latent",
                                    generator=[torch.Generator().manual_seed(i) for i in (5, 6)]).images)
    finally:
        hook.remove()
    # Stopped: the up blocks saw only the 2 main passes (2 images x CFG); run through, the 2 references' passes too.
    assert up_calls == [4, 4, 2, 4, 2, 4]
    assert torch.equal(latents[0], latents[1])


def test_the_family_picks_the_default(pipe: Any, sd1_dir: Path) -> None:
    runner = RoundRunner(pipe)
    runner.close()
    assert resolve_layers("", pipe) == "up" and runner.fabric_layers == "up"
    assert resolve_layers("all", pipe) == "all"  # from the environment: every layer, whatever the family
    assert resolve_layers("", load_pipeline(sd1_dir)) == "all"
    with pytest.raises(ValueError, match="FABRIC layers"):
        resolve_layers("middle", pipe)
    assert Settings.from_env({}).models.fabric_layers == ""
    assert Settings.from_env({"PHILIP_FABRIC_LAYERS": "mid+up"}).models.fabric_layers == "mid+up"
    with pytest.raises(ValueError, match="PHILIP_FABRIC_LAYERS"):
        Settings.from_env({"PHILIP_FABRIC_LAYERS": "middle"})


def test_up_only_fabric_still_changes_sdxl_images(pipe: Any) -> None:
    runner = RoundRunner(pipe, fabric_layers="up")
    first = runner.run(PARAMS, Feedback())
    liked = FeedbackImage("img-0", first.images[0].image, first.images[0].origin)
    feedback = Feedback(liked=(liked,), diversity=0.3)
    params = dataclasses.replace(PARAMS, seed=40)
    fabric = runner.run(params, feedback)
    plain = runner.run(params, dataclasses.replace(feedback, weights=FeedbackWeights(min_weight=0.0, max_weight=0.0)))
    runner.close()
    assert fabric.compute.reference_image_evals == 3 and plain.compute.reference_image_evals == 0
    differences = [np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).mean()
                   for a, b in zip(fabric.images, plain.images, strict=True)]
    assert all(d > 0 for d in differences), differences


def test_the_refiner_takes_the_setting(sdxl_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny-sdxl"
    shutil.copytree(sdxl_dir, model)  # a folder of its own: start-up fits and saves its preview projection
    settings = Settings(model_dir=str(model), upscaler_path=str(REPO / "models" / "philip-tiny-x4.onnx"), threads=1,
                        adapters_dir=str(tmp_path / "adapters"), fabric_layers="mid+up")
    refiner = open_refiner(settings)
    refiner.runner.close()
    assert refiner.runner.fabric_layers == "mid+up"
