"""The oracle bound of `philip eval feedback-bound` (pure Python, no model)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from philip.evals.feedback_bound import (
    BoundConfig,
    _asked_drawing,
    blind_compute_ratio,
    explorer_compute_ratio,
    feedback_bound,
    keep_from_agreement,
    oracle_compute_ratio,
    parse_keep,
)
from philip.tiny.measure import Measurement

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
    out = feedback_bound(BoundConfig(trials=200, blind_trials=20), 1.83, keep=(0.5, 0.5, 0.5))
    assert set(out) >= {"oracle_knows_liked_fabric_rounds", "oracle_knows_all_plain_rounds",
                        "control_knows_nothing_plain_rounds", "best_blind_plain_rounds", "blind_given_keep",
                        "prompt_explorer_plain_rounds"}
    assert len(out["best_blind_plain_rounds"]["keep_fg_bg_shape"]) == 3
    with pytest.raises(ValueError, match="learns"):
        oracle_compute_ratio(CFG, 1.0, "everything")
    with pytest.raises(ValueError, match="user"):
        BoundConfig(user="psychic")
    with pytest.raises(ValueError, match="keep"):
        blind_compute_ratio(CFG, (0.5, 1.5, 0.5), 1.0)


BLIND = BoundConfig(blind_trials=1_500)


def test_a_blind_refiner_that_keeps_nothing_costs_what_rerolling_costs() -> None:
    assert blind_compute_ratio(BLIND, (0.0, 0.0, 0.0), 1.0) == pytest.approx(1.0, abs=0.08)


def test_a_blind_refiner_must_both_keep_and_explore_and_stays_above_the_oracle() -> None:
    half = blind_compute_ratio(BLIND, (0.5, 0.5, 0.5), 1.0)
    copies = blind_compute_ratio(BLIND, (1.0, 1.0, 1.0), 1.0)  # a wrong like is copied for ever
    assert half < 0.75 and copies > 2.0
    assert half > oracle_compute_ratio(CFG, 1.0, "liked") + 0.1
    assert blind_compute_ratio(BLIND, (0.5, 0.5, 0.5), 1.83) > half + 0.2  # dearer rounds, same search


def test_keep_comes_from_agreement_above_chance() -> None:
    assert keep_from_agreement(0.5, 0.5) == 0.0
    assert keep_from_agreement(1.0, 0.2) == 1.0
    assert keep_from_agreement(0.65, 0.115) == pytest.approx(0.6045, abs=1e-3)
    assert keep_from_agreement(0.05, 0.115) == 0.0  # below chance: nothing kept, not negative
    with pytest.raises(ValueError, match="chance"):
        keep_from_agreement(0.5, 1.0)


def test_keep_parses_three_probabilities() -> None:
    assert parse_keep("0.6, 0.69,0.47") == (0.6, 0.69, 0.47)
    for bad in ("0.6,0.7", "a,b,c", "0.5,0.5,2"):
        with pytest.raises(ValueError, match="fg,bg,shape"):
            parse_keep(bad)


def test_a_prompt_explorer_that_knows_what_it_asked_for_beats_every_blind_refiner() -> None:
    explorer = explorer_compute_ratio(BLIND)
    assert explorer < blind_compute_ratio(BLIND, (0.5, 0.5, 0.5), 1.0) - 0.15  # the sweep's best keep
    # The user's choices do the work: with a choice model that hardly prefers fewer misses, the posterior
    # stays flat and asking for distinct targets at random costs about what re-rolling does.
    assert explorer_compute_ratio(BLIND, beta=0.01) > explorer + 0.4
    # The posterior is built on what was asked for: a model that draws other colours than asked misleads it.
    assert explorer_compute_ratio(dataclasses.replace(BLIND, caption_colour_accuracy=0.7)) > explorer + 0.05


def test_the_explorers_drawing_and_its_arguments() -> None:
    rng = random.Random(0)
    assert _asked_drawing(rng, ("red", "circle", "blue"), 1.0, 1.0) == Measurement("red", "blue", "circle", 0, 0, 0)
    for _ in range(50):
        m = _asked_drawing(rng, ("red", "circle", "blue"), 0.0, 0.0)
        assert m.fg != m.bg and m.fg != "red" and m.bg != "blue" and m.shape != "circle"
    with pytest.raises(ValueError, match="beta"):
        explorer_compute_ratio(BLIND, beta=0.0)
    with pytest.raises(ValueError, match="accuracies"):
        BoundConfig(caption_shape_accuracy=1.5)
