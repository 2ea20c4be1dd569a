"""The prompt explorer's posterior and proposals (pure Python, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from philip.evals.prompt_explorer import PromptExplorer, Target


def _misses(a: Target, b: Target) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def test_the_prompt_fixes_what_it_names() -> None:
    assert len(PromptExplorer("a shape", np.random.default_rng(0)).targets) == 8 * 7 * 3
    circles = PromptExplorer("A circle", np.random.default_rng(0)).targets
    assert len(circles) == 8 * 7 and {shape for _, _, shape in circles} == {"circle"}
    assert all(fg != bg for fg, bg, _ in circles)
    assert PromptExplorer.caption(("red", "blue", "circle")) == "a red circle on a blue background"


def test_proposals_are_distinct_and_follow_the_posterior() -> None:
    explorer = PromptExplorer("a square", np.random.default_rng(1))
    assert len(set(explorer.propose(4))) == 4
    assert len(explorer.propose(500)) == 56
    asked = [("red", "blue", "square"), ("green", "white", "square"), ("black", "yellow", "square"),
             ("orange", "purple", "square")]
    before = explorer.probability(asked[0])
    explorer.update(asked, liked=0, disliked=3)
    assert explorer.probability(asked[0]) > before > explorer.probability(asked[3])
    assert explorer.probability(("red", "blue", "circle")) == 0.0  # the prompt rules it out
    # Sharing the liked image's fg is worth more than sharing the disliked one's.
    assert explorer.probability(("red", "green", "square")) > explorer.probability(("orange", "green", "square"))


def test_a_consistent_user_leads_it_to_the_target() -> None:
    """With a user who likes the fewest misses and dislikes the most, the target is asked for within 12 rounds."""
    for seed in range(10):
        target: Target = ("orange", "white", "triangle")
        explorer = PromptExplorer("a shape", np.random.default_rng(seed))
        for _ in range(12):
            asked = explorer.propose(4)
            if target in asked:
                break
            misses = [_misses(a, target) for a in asked]
            liked, disliked = misses.index(min(misses)), misses.index(max(misses))
            explorer.update(asked, liked, disliked if misses[disliked] > misses[liked] else None)
        else:
            pytest.fail(f"seed {seed}: the target was not asked for in 12 rounds "
                        f"(posterior {explorer.probability(target):.3f})")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="beta"):
        PromptExplorer("a shape", np.random.default_rng(0), beta=0.0)
    explorer = PromptExplorer("a shape", np.random.default_rng(0))
    with pytest.raises(ValueError, match="index"):
        explorer.update(explorer.propose(4), liked=4, disliked=None)
