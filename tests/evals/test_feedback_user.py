"""The simulated user and the trial draws of `philip eval feedback` (no services needed)."""

from __future__ import annotations

import random

import pytest

from philip.evals.feedback import (
    PROMPTS,
    Target,
    choose_feedback,
    draw_trial,
    parse_weight_options,
    wilson_interval,
)
from philip.tiny.measure import Measurement


def test_the_user_likes_the_closest_and_dislikes_the_farthest() -> None:
    assert choose_feedback([2, 0, 3, 1], ["a", "b", "c", "d"], likes=1) == (["b"], ["c"])
    assert choose_feedback([2, 1, 3, 1], ["a", "b", "c", "d"], likes=2) == (["b", "d"], ["c"])


def test_no_dislike_when_every_image_is_as_close() -> None:
    assert choose_feedback([1, 1, 1, 1], ["a", "b", "c", "d"], likes=1) == (["a"], [])


def _drawn(fg: str, bg: str, shape: str) -> Measurement:
    return Measurement(fg, bg, shape, fill=0.8, solidity=0.95, area=0.2)


def test_the_colour_user_ranks_equal_misses_by_how_near_the_colours_are() -> None:
    target = Target("orange", "blue", "circle")
    drawn = [_drawn("blue", "white", "circle"), _drawn("yellow", "white", "circle"),
             _drawn("orange", "black", "circle"), _drawn("unknown", "white", "unknown")]
    colour = [target.closeness(m, "colour") for m in drawn]
    # One miss fewer always wins; among two misses, yellow (near orange) beats blue; unknown is farthest.
    assert choose_feedback(colour, ["a", "b", "c", "d"], likes=2) == (["c", "b"], ["d"])
    misses = [target.closeness(m, "misses") for m in drawn]
    assert choose_feedback(misses, ["a", "b", "c", "d"], likes=2) == (["c", "a"], ["d"])
    assert target.closeness(_drawn("orange", "blue", "circle"), "colour") == (0, 0.0)


def test_trials_are_drawn_deterministically_and_consistently() -> None:
    first = [draw_trial(random.Random(5)) for _ in range(3)]
    assert first == [draw_trial(random.Random(5)) for _ in range(3)]
    rng = random.Random(0)
    for _ in range(200):
        prompt, target = draw_trial(rng)
        assert prompt in PROMPTS and target.fg != target.bg
        if prompt != "a shape":
            assert prompt == f"a {target.shape}"  # the prompt never contradicts the target


def test_weight_options_parse_and_name_what_is_wrong() -> None:
    assert parse_weight_options(["end=0.5", " min_weight=0"]) == {"end": 0.5, "min_weight": 0.0}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_weight_options(["strength=1"])
    with pytest.raises(ValueError, match="not a number"):
        parse_weight_options(["end=half"])


def test_wilson_intervals_cover_the_rate_and_stay_in_bounds() -> None:
    low, high = wilson_interval(0, 120)
    assert low == 0.0 and 0.02 < high < 0.04  # zero hits in 120 still allows ~3 %
    low, high = wilson_interval(6, 120)
    assert low < 0.05 < high and high - low < 0.1
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(50, 50)[1] == 1.0
