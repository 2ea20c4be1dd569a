"""The simulated user and the trial draws of `philip eval feedback` (no services needed)."""

from __future__ import annotations

import random

from philip.evals.feedback import PROMPTS, choose_feedback, draw_trial


def test_the_user_likes_the_closest_and_dislikes_the_farthest() -> None:
    assert choose_feedback([2, 0, 3, 1], ["a", "b", "c", "d"], likes=1) == (["b"], ["c"])
    assert choose_feedback([2, 1, 3, 1], ["a", "b", "c", "d"], likes=2) == (["b", "d"], ["c"])


def test_no_dislike_when_every_image_is_as_close() -> None:
    assert choose_feedback([1, 1, 1, 1], ["a", "b", "c", "d"], likes=1) == (["a"], [])


def test_trials_are_drawn_deterministically_and_consistently() -> None:
    first = [draw_trial(random.Random(5)) for _ in range(3)]
    assert first == [draw_trial(random.Random(5)) for _ in range(3)]
    rng = random.Random(0)
    for _ in range(200):
        prompt, target = draw_trial(rng)
        assert prompt in PROMPTS and target.fg != target.bg
        if prompt != "a shape":
            assert prompt == f"a {target.shape}"  # the prompt never contradicts the target
