"""Prompt exploration: the vocabulary, the posterior and the proposals (no model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from philip.tiny.dataset import prompt_vocabulary
from services.refiner.explore import (
    PromptExplorer,
    PromptVocabulary,
    RoundChoice,
    Target,
    explored_prompts,
)

TINY = PromptVocabulary.from_json(prompt_vocabulary())


def _misses(a: Target, b: Target) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def test_the_shipped_model_folder_holds_the_tiny_vocabulary() -> None:
    assert PromptVocabulary.load("models/philip-tiny") == TINY
    assert TINY.names == ["fg", "shape", "bg"]


def test_captions_round_trip_and_other_prompts_do_not_parse() -> None:
    assert TINY.caption(("red", "circle", "blue")) == "a red circle on a blue background"
    assert TINY.parse("a red circle on a blue background") == ("red", "circle", "blue")
    for other in ("a circle", "a red circle", "a red star on a blue background", "a red circle on a blue"):
        assert TINY.parse(other) is None


def test_the_prompt_fixes_what_it_names() -> None:
    assert len(TINY.targets("a shape")) == 8 * 7 * 3
    circles = TINY.targets("A circle")
    assert len(circles) == 8 * 7 and {shape for _, shape, _ in circles} == {"circle"}
    assert all(fg != bg for fg, _, bg in circles)
    assert len(TINY.targets("a red shape")) == 8 * 7 * 3  # a colour word could be either colour


def test_a_bad_vocabulary_file_is_named(tmp_path: Path) -> None:
    assert PromptVocabulary.load(tmp_path) is None
    (tmp_path / "prompt_vocabulary.json").write_text(json.dumps({"template": "a {fg} thing", "slots": {"bg": ["red"]}}))
    with pytest.raises(ValueError, match=r"prompt_vocabulary\.json: not a prompt vocabulary"):
        PromptVocabulary.load(tmp_path)


def test_proposals_are_distinct_and_follow_the_posterior() -> None:
    explorer = PromptExplorer(TINY, "a square", np.random.default_rng(1))
    assert len(set(explorer.propose(4))) == 4
    assert len(explorer.propose(500)) == 56
    asked: list[Target | None] = [("red", "square", "blue"), ("green", "square", "white"),
                                  ("black", "square", "yellow"), ("orange", "square", "purple")]
    before = explorer.probability(("red", "square", "blue"))
    explorer.update(asked, liked=0, disliked=3)
    liked = explorer.probability(("red", "square", "blue"))
    assert liked > before > explorer.probability(("orange", "square", "purple"))
    assert explorer.probability(("red", "circle", "blue")) == 0.0  # the prompt rules it out
    # Sharing the liked image's fg is worth more than sharing the disliked one's.
    assert explorer.probability(("red", "square", "green")) > explorer.probability(("orange", "square", "green"))


def test_images_not_drawn_from_a_caption_carry_no_evidence() -> None:
    explorer = PromptExplorer(TINY, "a shape", np.random.default_rng(0))
    explorer.replay([RoundChoice(("a shape",) * 4, liked=1, disliked=2)])
    assert np.all(explorer.log_posterior == 0)
    with pytest.raises(ValueError, match="index"):
        explorer.update([None] * 4, liked=4, disliked=None)


def test_what_the_prompt_names_is_the_prior_when_the_choices_say_nothing() -> None:
    """Round 1 of a full caption: four alike images, one liked, one disliked. That says nothing about the colours,
    so round 2 asks near what the person wrote (its own caption most often, else one colour changed), not
    anywhere; a prompt that names no colour keeps every colour equally likely."""
    prompt = "a red circle on a blue background"
    explorer = PromptExplorer(TINY, prompt, np.random.default_rng(0))
    explorer.replay([RoundChoice((prompt,) * 4, liked=0, disliked=1)])
    own = explorer.probability(("red", "circle", "blue"))
    assert own == max(explorer.probability(t) for t in explorer.targets) and own > 0.25
    assert explorer.probability(("yellow", "circle", "blue")) > explorer.probability(("yellow", "circle", "green"))
    asked = [explorer.propose(4) for explorer.rng in (np.random.default_rng(seed) for seed in range(50))]
    assert sum(("red", "circle", "blue") in a for a in asked) >= 30  # 37 of 50 rounds (1 without the prior)
    near = [_misses(t, ("red", "circle", "blue")) <= 1 for a in asked for t in a]
    assert sum(near) / len(near) > 0.6  # 0.73 (0.22 without the prior)
    flat = PromptExplorer(TINY, "a circle", np.random.default_rng(0))
    assert np.all(flat.log_posterior == flat.log_posterior[0])  # "circle" is fixed, no colour named


def test_a_consistent_user_leads_it_to_the_target() -> None:
    """With a user who likes the fewest misses and dislikes the most, the target is asked for within 12 rounds
    (a flat posterior would ask for it within 12 rounds about a quarter of the time)."""
    target: Target = ("orange", "triangle", "white")
    for seed in range(10):
        explorer = PromptExplorer(TINY, "a shape", np.random.default_rng(seed))
        for _ in range(12):
            asked = explorer.propose(4)
            if target in asked:
                break
            misses = [_misses(a, target) for a in asked]
            liked, disliked = misses.index(min(misses)), misses.index(max(misses))
            explorer.update(list(asked), liked, disliked if misses[disliked] > misses[liked] else None)
        else:
            pytest.fail(f"seed {seed}: the target was not asked for in 12 rounds "
                        f"(posterior {explorer.probability(target):.3f})")


def test_explored_prompts_replay_the_history_and_repeat_for_a_seed() -> None:
    history = [RoundChoice(("a circle",) * 4, 0, 3),
               RoundChoice(tuple(TINY.caption(t) for t in [("red", "circle", "blue"), ("green", "circle", "white"),
                                                           ("black", "circle", "yellow"),
                                                           ("orange", "circle", "purple")]), 0, 3)]
    first = explored_prompts(TINY, "a circle", history, 4, seed=7)
    assert first == explored_prompts(TINY, "a circle", history, 4, seed=7)
    assert len(set(first)) == 4 and all(TINY.parse(p) is not None and "circle" in p for p in first)
    with pytest.raises(ValueError, match="beta"):
        PromptExplorer(TINY, "a shape", np.random.default_rng(0), beta=0.0)


def test_history_on_the_wire_is_checked_precisely() -> None:
    from philip.rpc.errors import InvalidArgument
    from philip.v1 import refiner_pb2
    from services.refiner.codec import history_from_pb

    ok = refiner_pb2.RoundChoice(prompts=["a circle", "a red circle on a blue background"], liked=1, disliked=-1)
    assert history_from_pb([ok]) == [RoundChoice(("a circle", "a red circle on a blue background"), 1, None)]
    for bad, field in ((refiner_pb2.RoundChoice(prompts=["a circle"] * 4, liked=4), "history[0].liked"),
                       (refiner_pb2.RoundChoice(prompts=["a circle"], disliked=-2), "history[0].disliked"),
                       (refiner_pb2.RoundChoice(prompts=[]), "history[0].prompts"),
                       (refiner_pb2.RoundChoice(prompts=[""]), "history[0].prompts")):
        with pytest.raises(InvalidArgument, match=re.escape(field)):
            history_from_pb([ok, bad][1:])
    with pytest.raises(InvalidArgument, match="0-100 rounds"):
        history_from_pb([ok] * 101)
