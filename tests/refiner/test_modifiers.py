"""Exploration for any checkpoint: the shipped modifier vocabulary, the posterior over its slots, pins and bans."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from philip.exploration import RoundChoice, SlotConstraints
from philip.rpc.errors import InvalidArgument
from philip.tiny.dataset import prompt_vocabulary
from services.refiner.explore import PromptExplorer, PromptVocabulary, explore_round
from services.refiner.modifiers import ModifierVocabulary, load_vocabulary

SHIPPED = ModifierVocabulary.load("config/vocabulary.toml")
TINY = PromptVocabulary.from_json(prompt_vocabulary())
PROMPT = "a fox in the snow"


def _slot(target: tuple[str | None, ...], name: str) -> str | None:
    return target[SHIPPED.names.index(name)]


def test_the_shipped_vocabulary_composes_prompts_it_can_read_back() -> None:
    assert SHIPPED.names == ["medium", "style", "lighting", "palette", "composition"]
    target = ("oil painting", "art nouveau", "golden hour", "pastel", "close-up shot")
    prompt = SHIPPED.compose(PROMPT, target)
    assert prompt == ("a fox in the snow, oil painting, art nouveau style, golden hour lighting, pastel palette, "
                      "close-up shot")
    assert SHIPPED.parse(prompt) == target
    assert SHIPPED.parse(PROMPT) is None  # the person's own prompt names no slot: no evidence


def test_a_slot_the_prompt_names_by_word_stays_as_the_prompt_says() -> None:
    prompt = "a watercolor painting of a fox in the snow"
    assert SHIPPED.named(prompt) == {"medium": "watercolor painting"}
    targets = SHIPPED.targets(prompt)
    assert {_slot(t, "medium") for t in targets} == {"watercolor painting"}
    composed = SHIPPED.compose(prompt, targets[0])
    assert composed.count("watercolor painting") == 1 and composed.startswith(prompt + ", ")
    assert _slot(SHIPPED.parse(composed) or (), "medium") == "watercolor painting"  # read from the prompt's words


def _simulate(vocabulary: ModifierVocabulary, prompt: str, rounds: int, likes: dict[str, str],
              dislikes: dict[str, str], seed: int = 0) -> PromptExplorer:
    """A person who likes the image that has most of ``likes`` and dislikes the one with most of ``dislikes``."""
    history: list[RoundChoice] = []
    for r in range(rounds):
        prompts, _ = explore_round(vocabulary, prompt, history, 4, seed + r)
        asked = [vocabulary.parse(p) for p in prompts]

        def score(a: tuple[str | None, ...] | None, wanted: dict[str, str]) -> int:
            return sum(a is not None and a[vocabulary.names.index(s)] == v for s, v in wanted.items())

        liked = max(range(4), key=lambda i: score(asked[i], likes))
        disliked = max((i for i in range(4) if i != liked), key=lambda i: score(asked[i], dislikes))
        history.append(RoundChoice(tuple(prompts), liked, disliked))
    explorer = PromptExplorer(vocabulary, prompt, np.random.default_rng(99))
    explorer.replay(history)
    return explorer


def test_the_posterior_moves_toward_liked_values_and_away_from_disliked_ones() -> None:
    explorer = _simulate(SHIPPED, PROMPT, rounds=8, likes={"lighting": "neon", "palette": "warm"},
                         dislikes={"medium": "pixel art"})
    beliefs = {b.slot: dict(b.values) for b in explorer.beliefs()}
    assert next(iter(beliefs["lighting"])) == "neon" and beliefs["lighting"]["neon"] > 0.5  # uniform: 1/7
    assert next(iter(beliefs["palette"])) == "warm"
    medium = np.bincount(explorer._codes[:, 0], weights=explorer._posterior(), minlength=8)
    assert medium[SHIPPED.slots[0][1].index("pixel art")] < 1 / 8 / 2  # a disliked value becomes rarer
    proposals = Counter(_slot(t, "lighting") for t in explorer.propose(200))
    assert proposals.most_common(1)[0][0] == "neon"


def test_a_prompt_edit_keeps_what_the_likes_said_about_slots_it_does_not_name() -> None:
    history: list[RoundChoice] = []
    for r in range(6):
        prompts, _ = explore_round(SHIPPED, PROMPT, history, 4, r)
        liked = next((i for i, p in enumerate(prompts) if "moonlit lighting" in p), 0)
        history.append(RoundChoice(tuple(prompts), liked, None))
    _, beliefs = explore_round(SHIPPED, "a fox, oil painting", history, 4, 7)  # the person edits the prompt
    lighting = next(b for b in beliefs if b.slot == "lighting")
    assert lighting.values[0][0] == "moonlit" and lighting.values[0][1] > 0.3
    assert "medium" not in {b.slot for b in beliefs}  # the new prompt names it: nothing to learn there


def test_a_pin_is_carried_by_every_explored_prompt_and_a_ban_by_none() -> None:
    pins = SlotConstraints(pinned=(("lighting", "neon"),), banned=(("medium", "photograph"), ("palette", "warm")))
    pins.check(SHIPPED.slots)
    prompts, beliefs = explore_round(SHIPPED, PROMPT, [], 8, 3, pins)
    assert len(prompts) == 8 and all("neon lighting" in p for p in prompts)
    assert not any("photograph" in p or "warm palette" in p for p in prompts)
    assert next(b for b in beliefs if b.slot == "lighting").values == (("neon", 1.0),)
    tiny_prompts, _ = explore_round(TINY, "a circle", [], 4, 1, SlotConstraints(pinned=(("bg", "blue"),)))
    assert all(p.endswith("circle on a blue background") for p in tiny_prompts)


@pytest.mark.parametrize(("constraints", "message"), [
    (SlotConstraints(pinned=(("weather", "rain"),)), "unknown slot 'weather'"),
    (SlotConstraints(banned=(("lighting", "disco"),)), "'disco' is not a value of 'lighting'"),
    (SlotConstraints(pinned=(("lighting", "neon"), ("lighting", "candle"))), "one pin per slot"),
    (SlotConstraints(pinned=(("palette", "warm"),), banned=(("palette", "warm"),)), "leave slot 'palette' no value"),
])
def test_constraints_that_cannot_be_honoured_are_refused(constraints: SlotConstraints, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        constraints.check(SHIPPED.slots)


def test_bad_vocabulary_files_are_named(tmp_path: Path) -> None:
    cases = {
        "no_slots.toml": 'join = "{prompt}, {modifiers}"\n',
        "no_value_field.toml": '[slots.light]\nphrase = "lighting"\nvalues = ["neon"]\n',
        "same_phrase.toml": '[slots.a]\nvalues = ["neon"]\n[slots.b]\nvalues = ["neon"]\n',
        "bad_join.toml": 'join = "{prompt}"\n[slots.a]\nvalues = ["x"]\n',
        "too_big.json": json.dumps({"slots": {f"s{k}": {"values": [f"v{k}_{i}" for i in range(40)]}
                                              for k in range(4)}}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"PHILIP_VOCABULARY_PATH=.*{name}: not a modifier vocabulary"):
            ModifierVocabulary.load(tmp_path / name)
    with pytest.raises(ValueError, match="cannot read it"):
        ModifierVocabulary.load(tmp_path / "missing.toml")


def test_the_model_folders_own_vocabulary_comes_first(tmp_path: Path) -> None:
    own, source = load_vocabulary("models/philip-tiny", "config/vocabulary.toml")
    assert own == TINY and source.endswith("philip-tiny/prompt_vocabulary.json")
    modifiers, source = load_vocabulary(tmp_path, "config/vocabulary.toml")
    assert modifiers == SHIPPED and source == "config/vocabulary.toml"
    assert load_vocabulary(tmp_path, "") == (None, "")
