"""Smoke test of `philip bench http` on a toy model: one server, both edges, every key reported.

Timings on a toy model (and a shared CI machine) mean nothing, so no timing goal is asserted here;
every SSE viewer getting the final image is not a timing, so it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from philip.bench.http_api import HttpBenchConfig, run_http_bench

pytestmark = pytest.mark.slow  # a server child, a toy model and a dozen rounds: ~50 s on 2 cores

REPO = Path(__file__).resolve().parents[2]
TIMES = ("http_generate_s", "grpc_generate_s", "http_first_preview_s", "grpc_first_preview_s", "sse_wall_s")
RATIOS = ("http_overhead", "first_preview_ratio")


def test_bench_http_reports_every_key(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server child finalizes sessions with the shipped upscaler, wherever pytest runs from.
    monkeypatch.setenv("PHILIP_UPSCALER_PATH", str(REPO / "models" / "philip-tiny-x4.onnx"))
    monkeypatch.delenv("PHILIP_API_KEYS_FILE", raising=False)
    cfg = HttpBenchConfig(model_dir=tiny_model_dir, images=2, steps=2, repeats=1, viewers=12, threads=1,
                          startup_timeout_s=120, call_timeout_s=120)
    result = run_http_bench(cfg)

    for key in (*TIMES, *RATIOS):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["max_pixel_diff"] == 0  # the same params and seed through both edges: the same images
    assert (result["sse_viewers"], result["sse_viewers_final"]) == (12, 12), result["sse_errors"]
    assert result["sse_errors"] == []
    low, high = result["sse_events_per_viewer"]
    assert 4 <= low <= high  # round_started, progress/preview, round_images, final at least
    assert result["sse_rss_peak_mb"] >= result["sse_rss_before_mb"] > 0
    assert result["sse_rss_growth_mb"] == pytest.approx(result["sse_rss_peak_mb"] - result["sse_rss_before_mb"],
                                                        abs=0.11)
    assert set(result["goals"]) == set(result["met"]) == {"http_overhead", "first_preview_ratio", "sse_viewers_final"}
    assert result["met"]["sse_viewers_final"] is True
    assert result["all_met"] == all(result["met"].values())
    assert result["params"]["images"] == 2 and result["params"]["viewers"] == 12
    assert result["machine"]["cores"] >= 1
    assert len(result["samples"]["http_generate_s"]) == len(result["samples"]["grpc_first_preview_s"]) == 1
    assert json.loads(json.dumps(result)) == result
