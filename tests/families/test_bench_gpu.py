"""`philip bench gpu --json` on the CPU at a tiny scale: every field reported per model, FABRIC measured where the
family has it and skipped with a reason where not. Random-weight folders: the numbers are wiring, not speed."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from philip.cli import app


def test_bench_gpu_reports_every_field(tiny_families: dict[str, Path]) -> None:
    models = [tiny_families["sd1"], *(tiny_families[f] for f in ("flux",) if f in tiny_families)]
    args = ["bench", "gpu", "--json", "--steps", "2", "--batches", "1,2", "--threads", "1"]
    result = CliRunner().invoke(app, args + [arg for model in models for arg in ("--model", str(model))])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["batches"] == [1, 2]
    sd1, *others = report["models"]
    assert "error" not in sd1, sd1
    assert [row["batch"] for row in sd1["batches"]] == [1, 2]
    assert all(row["images_per_s"] > 0 and row["step_ms"] > 0 for row in sd1["batches"])
    assert sd1["first_preview_ms"]["ms"] > 0 and sd1["preview"] == "linear"
    assert sd1["fabric"]["references"] == 2 and sd1["fabric"]["ratio"] > 0
    assert sd1["peak_memory_mib"]["mib"] > 0 and sd1["dtype"] == "float32"
    assert sd1["attention"]["device"] == "cpu" and sd1["attention"]["attention_processors"]
    assert sd1["weights"].startswith("tiny model")
    for other in others:  # Flux: no FABRIC, said so
        assert "error" not in other, other
        assert "skipped" in other["fabric"]


def test_bench_gpu_rejects_bad_batches() -> None:
    result = CliRunner().invoke(app, ["bench", "gpu", "--batches", "1,x"])
    assert result.exit_code != 0 and "1,4,8" in result.output
