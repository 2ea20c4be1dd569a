"""Prompt exploration: ask for concrete targets and learn from which the person likes.

FABRIC and seed steering are blind: they copy a liked image whole and cannot tell its right attributes
from its wrong ones (`philip eval feedback-bound`). An explorer is not blind because it chose what to
ask for: it writes images' full captions from the model's vocabulary (``prompt_vocabulary.json`` in
the model folder: a template and the values of each slot), keeping what the person's prompt already
names, so it knows what every image was asked to show without reading the images. A posterior over the
targets is fed by the person's choices through a softmax choice model: P(like image i | target) is
proportional to exp(-beta * slots image i was asked to fill differently), the dislike to exp(+beta * ...).
Each round asks for distinct targets drawn in proportion to the posterior (Thompson sampling by Gumbel
top-k), so it exploits what the likes say and keeps exploring what they do not.

The refiner is stateless: every round replays the session's history (:class:`RoundChoice`), so any
replica can run any round.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCABULARY_FILE = "prompt_vocabulary.json"
# How sharply the choice model prefers the image that misses fewer slots; 2-4 simulate alike.
DEFAULT_BETA = 2.0
Target = tuple[str, ...]  # one value per slot, in the vocabulary's slot order


@dataclass(frozen=True)
class RoundChoice:
    """An earlier round: the prompt each image was drawn from, and the indices liked / disliked (or None)."""

    prompts: tuple[str, ...]
    liked: int | None = None
    disliked: int | None = None


@dataclass(frozen=True)
class PromptVocabulary:
    """A caption ``template`` with ``{slot}`` fields, each slot's values, and slots that must differ."""

    template: str
    slots: tuple[tuple[str, tuple[str, ...]], ...]
    distinct: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PromptVocabulary:
        slots = tuple((str(name), tuple(str(v) for v in values)) for name, values in data["slots"].items())
        vocabulary = cls(str(data["template"]), slots, tuple(tuple(g) for g in data.get("distinct", ())))
        names = [n for n, _ in slots]
        fields = re.findall(r"{(\w+)}", vocabulary.template)
        if sorted(fields) != sorted(names) or any(not values for _, values in slots):
            raise ValueError(f"template fields {fields} and slots {names} must match, each slot with values")
        if any(n not in names for group in vocabulary.distinct for n in group):
            raise ValueError(f"distinct groups {vocabulary.distinct} must name slots of {names}")
        return vocabulary

    @classmethod
    def load(cls, model_dir: str | Path) -> PromptVocabulary | None:
        """The model folder's vocabulary, or None when it has none (exploration is then unavailable)."""
        path = Path(model_dir) / VOCABULARY_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a prompt vocabulary ({exc})") from None

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.slots]

    def caption(self, target: Target) -> str:
        return self.template.format(**dict(zip(self.names, target, strict=True)))

    def parse(self, caption: str) -> Target | None:
        """The target a caption of this template asks for; None for any other prompt."""
        pattern = re.escape(self.template)
        for name, values in self.slots:
            alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})", 1)
        match = re.fullmatch(pattern, caption.strip())
        return tuple(match.group(n) for n in self.names) if match else None

    def targets(self, prompt: str) -> list[Target]:
        """Every target the prompt allows: a slot is fixed when the prompt names exactly one of its values and
        that word fills no other slot (so "a circle" fixes the shape; a colour could be either colour)."""
        words = set(re.findall(r"[\w-]+", prompt.lower()))
        choices = []
        for name, values in self.slots:
            named = [v for v in values if v.lower() in words]
            elsewhere = any(named and named[0] in other for n, other in self.slots if n != name)
            choices.append(named if len(named) == 1 and not elsewhere else list(values))
        index = {n: i for i, n in enumerate(self.names)}
        return [t for t in itertools.product(*choices)
                if all(len({t[index[n]] for n in group}) == len(group) for group in self.distinct)]


class PromptExplorer:
    """The posterior over the targets a prompt allows, and the targets to ask for next."""

    def __init__(self, vocabulary: PromptVocabulary, prompt: str, rng: np.random.Generator,
                 beta: float = DEFAULT_BETA) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.vocabulary = vocabulary
        self.targets = vocabulary.targets(prompt)
        self._index = {t: i for i, t in enumerate(self.targets)}
        self._codes = self._encode(self.targets)
        self.log_posterior = np.zeros(len(self.targets))
        self.beta = beta
        self.rng = rng

    def _encode(self, targets: Sequence[Target]) -> np.ndarray:
        positions = [{v: i for i, v in enumerate(values)} for _, values in self.vocabulary.slots]
        return np.array([[positions[k][v] for k, v in enumerate(t)] for t in targets]).reshape(len(targets), -1)

    def propose(self, n: int) -> list[Target]:
        """``n`` distinct targets (fewer if fewer remain) drawn without replacement from the posterior."""
        keys = self.log_posterior + self.rng.gumbel(size=len(self.targets))
        return [self.targets[i] for i in np.argsort(-keys)[:n]]

    def update(self, asked: Sequence[Target | None], liked: int | None, disliked: int | None) -> None:
        """One round's choice among the images; those not drawn from a caption (None) carry no evidence."""
        for i in (liked, disliked):
            if i is not None and not 0 <= i < len(asked):
                raise ValueError(f"liked {liked} / disliked {disliked} must index the {len(asked)} asked targets")
        known = [i for i, a in enumerate(asked) if a is not None]
        targets = [a for a in asked if a is not None]
        if not known:
            return
        misses = (self._codes[:, None, :] != self._encode(targets)[None, :, :]).sum(axis=2)
        misses = misses.astype(float)  # targets x known images
        if liked in known:
            self.log_posterior += -self.beta * misses[:, known.index(liked)] - _logsumexp(-self.beta * misses)
        if disliked in known:
            self.log_posterior += self.beta * misses[:, known.index(disliked)] - _logsumexp(self.beta * misses)
        self.log_posterior -= self.log_posterior.max()  # keep it finite over many rounds

    def replay(self, history: Sequence[RoundChoice]) -> None:
        for choice in history:
            self.update([self.vocabulary.parse(p) for p in choice.prompts], choice.liked, choice.disliked)

    def probability(self, target: Target) -> float:
        """The posterior probability of one target (0 if the prompt rules it out)."""
        if target not in self._index:
            return 0.0
        p = np.exp(self.log_posterior - self.log_posterior.max())
        return float(p[self._index[target]] / p.sum())


def explored_prompts(vocabulary: PromptVocabulary, prompt: str, history: Sequence[RoundChoice], n: int,
                     seed: int) -> list[str]:
    """The captions of ``n`` targets to ask for next, from ``history``; the same seed asks the same."""
    explorer = PromptExplorer(vocabulary, prompt, np.random.default_rng(seed))
    explorer.replay(history)
    return [vocabulary.caption(t) for t in explorer.propose(n)]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return np.asarray(top + np.log(np.exp(x - top[:, None]).sum(axis=1)))
