"""Smoke test of `philip bench generate` on a toy model: it runs end to end and reports every key.

Timings on a toy model (and a shared CI machine) mean nothing, so no goal is asserted here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from philip.bench.generate import GenerateBenchConfig, run_generate_bench

ISSUE_KEYS = (
    "direct_s", "grpc_s", "overhead_ratio", "batch8_s", "concurrent8_s", "batching_ratio", "first_preview_s",
    "step_s", "first_preview_ratio", "preview_cost_ratio", "peak_rss_mb",
)
RATIOS = ("overhead_ratio", "batching_ratio", "first_preview_ratio", "preview_cost_ratio")


def test_bench_generate_reports_every_key(tiny_model_dir: Path) -> None:
    cfg = GenerateBenchConfig(model_dir=tiny_model_dir, images=2, steps=2, repeats=1, threads=1,
                              startup_timeout_s=120, call_timeout_s=120)
    result = run_generate_bench(cfg)

    for key in ISSUE_KEYS:
        assert key in result, key
        assert isinstance(result[key], float) and math.isfinite(result[key]), (key, result[key])
        assert result[key] > 0, (key, result[key])
    for key in RATIOS:
        assert result[key] > 0, (key, result[key])
    assert result["batch8_s"] == result["grpc_s"]  # the same calls, under the issue's name
    assert result["concurrent8_batches"] >= 1
    assert result["max_pixel_diff"] <= 2  # direct and served images are the same work
    assert json.loads(json.dumps(result)) == result
