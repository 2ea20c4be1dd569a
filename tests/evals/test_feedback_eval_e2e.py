"""`philip eval feedback` end to end: in-process services, the shipped model, the JSON it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_trials_report_the_issue_fields_last_and_log_every_trial(tmp_path: Path) -> None:
    log = tmp_path / "trials.jsonl"
    env = {**os.environ, "PHILIP_THREADS": "2"}
    env.pop("PHILIP_REDIS_URL", None)  # the embedded in-process store
    run = subprocess.run(
        [sys.executable, "-m", "philip.cli", "eval", "feedback", "--trials", "2", "--cap", "8", "--steps", "4",
         "--weight", "end=0.5", "--trials-log", str(log), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert list(report)[-6:] == ["match_rate_by_round", "baseline_match_rate", "images_to_first_match_feedback",
                                 "images_to_first_match_reroll", "compute_ratio", "trials"]
    assert report["trials"] == 2 and report["weights"] == {"end": 0.5}
    assert len(report["match_rate_by_round"]) == 3
    assert all(0.0 <= r <= 1.0 for r in report["match_rate_by_round"])
    # With the cap at 8 images every method stops within 3 rounds (12 images) or at the first match.
    assert 1 <= report["images_to_first_match_feedback"] <= 9
    assert 1 <= report["images_to_first_match_reroll"] <= 9
    # Re-rolling is plain CFG batches (2 evaluations per image per step); feedback rounds also pay references.
    assert report["reroll_unet_evals"] % (2 * 4) == 0 and report["reroll_unet_evals"] >= 2 * 4 * 4
    assert report["feedback_unet_evals"] >= 2 * 4 * 4
    lines = _lines(log)
    # Rounds 2 and 3 of every feedback session are steered from a liked image: 8 parent-child pairs a trial.
    assert [t["inherited"]["fg"][1] for t in lines] == [8, 8]
    assert [t["unrelated"]["shape"][1] for t in lines] == [18, 18]  # 6 pairs in each of 3 re-rolled rounds
    assert [t["liked_right"]["bg"][1] for t in lines] == [2, 2]  # one like after rounds 1 and 2
    for key in ("parent_child_agreement", "unrelated_agreement", "liked_images_right"):
        assert set(report[key]) == {"fg", "bg", "shape", "both_colours"}
        assert all(0 <= v <= 1 for v in report[key].values())
        assert report[key]["both_colours"] <= min(report[key]["fg"], report[key]["bg"])
    assert [line["trial"] for line in lines] == [0, 1]
    assert {"fg", "bg", "shape"} == set(lines[0]["target"])
    assert sum(line["reroll_compute"] for line in lines) == report["reroll_unet_evals"]
    assert sum(line["feedback_compute"] for line in lines) == report["feedback_unet_evals"]


def _lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]
