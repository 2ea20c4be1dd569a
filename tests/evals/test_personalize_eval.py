"""`philip eval personalize` end to end at a few steps: the job path, the adapter switch, the judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from philip.evals.personalize import PersonalizeConfig, eval_prompts, evaluate_in_process, reference_images
from philip.tiny.measure import measure

pytestmark = pytest.mark.slow


def test_references_are_the_held_out_star_on_varied_backgrounds() -> None:
    judged = [measure(image) for image in reference_images(5)]
    assert {m.shape for m in judged} == {"star"} and {m.fg for m in judged} == {"green"}
    assert len({m.bg for m in judged}) == 5
    assert [bg for _, bg in eval_prompts("sks")] == ["red", "blue", "yellow", "purple", "orange", "white", "black"]


async def test_short_run_reports_every_number(tmp_path: Path) -> None:
    steps: list[int] = []
    result = await evaluate_in_process(PersonalizeConfig(steps=20, seeds_per_colour=1), save_dir=tmp_path,
                                       on_progress=lambda step, total, loss: steps.append(step))
    assert steps == list(range(1, 21))
    assert set(result) >= {"subject_rate_with", "subject_rate_without", "bg_follows_prompt", "train_s", "method"}
    assert result["method"] == "lora" and result["n"] == 7 and 0 < result["train_s"] < 120
    assert result["bg_follows_prompt"] >= 0.8  # 20 steps of LoRA must not break prompt control
    assert result["subject_rate_without"] <= 0.15
    assert {p.name for p in tmp_path.iterdir()} == {"personalize_refs.png", "personalize_with.png",
                                                    "personalize_without.png"}
