"""The oracle bound of `philip eval feedback-bound` (pure Python, no model)."""

from __future__ import annotations

import pytest

from philip.evals.feedback_bound import BoundConfig, feedback_bound, oracle_compute_ratio

CFG = BoundConfig(trials=4_000)


def test_an_oracle_that_learns_nothing_costs_what_rerolling_costs() -> None:
    assert oracle_compute_ratio(CFG, 1.0, "nothing") == pytest.approx(1.0, abs=0.06)


def test_within_one_round_no_method_can_do_better_than_rerolling() -> None:
    one_round = BoundConfig(trials=500, cap=4)
    for learns in ("liked", "all", "nothing"):
        assert oracle_compute_ratio(one_round, 1.83, learns) == 1.0


def test_knowing_more_and_cheaper_rounds_lower_the_bound() -> None:
    liked, every = oracle_compute_ratio(CFG, 1.0, "liked"), oracle_compute_ratio(CFG, 1.0, "all")
    assert every <= liked + 0.02 and liked < 0.5
    assert oracle_compute_ratio(CFG, 1.83, "liked") > liked + 0.05


def test_the_report_and_a_bad_argument() -> None:
    out = feedback_bound(BoundConfig(trials=200), 1.83)
    assert set(out) >= {"oracle_knows_liked_fabric_rounds", "oracle_knows_all_plain_rounds",
                        "control_knows_nothing_plain_rounds"}
    with pytest.raises(ValueError, match="learns"):
        oracle_compute_ratio(CFG, 1.0, "everything")
