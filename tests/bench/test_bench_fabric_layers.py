"""`philip bench fabric-layers` at a small scale, and the real-UNet numbers it reports (meta device, no weights)."""

from __future__ import annotations

import pytest
import torch

from philip.bench.fabric_layers import FabricLayersBenchConfig, run_fabric_layers_bench
from philip.bench.fabric_shapes import SDXL_UNET, choice_costs, meta_unet, reference_pass


def test_real_sdxl_stores_200_mib_per_reference_at_1024_px_and_105_in_the_up_blocks() -> None:
    unet = meta_unet(SDXL_UNET)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # the published SDXL base UNet
    passes = {c: reference_pass(unet, 1024, c) for c in ("all", "up", "mid+up", "down+mid")}
    costs = {c: choice_costs(shapes, tf, unet_tf=passes["all"][1], images=4, liked=2, disliked=2)
             for c, (shapes, tf) in passes.items()}
    assert {c: (v["layers"], v["mib_per_reference"]) for c, v in costs.items()} == {
        "all": (70, 200.0), "up": (36, 105.0), "mid+up": (46, 130.0), "down+mid": (34, 95.0)}
    assert 6.7 < passes["all"][1] < 6.8  # TFLOP per image at 1024 px
    # Only down+mid's pass stops early (before the up blocks); every other pass runs the whole UNet.
    assert passes["up"][1] == passes["mid+up"][1] == passes["all"][1] > 2 * passes["down+mid"][1]
    assert costs["down+mid"]["flop_ratio"] < costs["up"]["flop_ratio"] < costs["all"]["flop_ratio"]


def test_the_bench_reports_every_choice_on_the_tiny_sdxl_folder() -> None:
    torch.set_num_threads(1)  # the machine is shared
    result = run_fabric_layers_bench(FabricLayersBenchConfig(images=2, steps=2, repeats=1, real=False,
                                                             choices=("all", "up")))
    assert result["family"] == "sdxl" and result["default"] == "up" and result["plain_round_s"] > 0
    all_, up = result["choices"]["all"], result["choices"]["up"]
    assert (all_["layers"], up["layers"]) == (4, 2)
    assert 0 < up["stored_bytes_per_reference"] < all_["stored_bytes_per_reference"]
    assert all(c["fabric_ratio"] > 0 and c["fabric_cpu_ratio"] > 0 for c in (all_, up))


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
