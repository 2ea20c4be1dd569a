"""`philip bench refine` at a small scale: every key is reported, batching counted per kind of round."""

from __future__ import annotations

from pathlib import Path

import pytest

from philip.bench.refine import RefineBenchConfig, run_refine_bench

pytestmark = pytest.mark.slow


def test_bench_refine_reports_fabric_cost_and_batching(tiny_model_dir: Path) -> None:
    result = run_refine_bench(RefineBenchConfig(model_dir=tiny_model_dir, images=2, steps=2, repeats=1, sessions=2))
    assert result["fabric_unet_image_evals"] > result["plain_unet_image_evals"]
    batching = result["batching"]
    assert set(result["refine_batching"]) == {"plain", "explored", "fabric"}
    for kind in ("plain", "explored", "fabric"):
        timings = batching[kind]
        assert all(timings[k] > 0 for k in ("batched_call_s", "queued_s", "one_at_a_time_s"))
        ratio = timings["batched_call_s"] / timings["queued_s"]
        assert result["refine_batching"][kind] == pytest.approx(ratio, rel=0.05)
