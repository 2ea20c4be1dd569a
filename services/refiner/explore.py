"""Prompt exploration: ask for concrete targets and learn from which the person likes.

FABRIC and seed steering are blind: they copy a liked image whole and cannot tell its right attributes
from its wrong ones (`philip eval feedback-bound`). An explorer is not blind because it chose what to
ask for: it writes images' prompts from a vocabulary of slots and their values, keeping what the person's
prompt already names, so it knows what every image was asked to show without reading the images. A
vocabulary is the model folder's own (``prompt_vocabulary.json``: a caption template, :class:`PromptVocabulary`)
or a deployment's modifiers joined to the person's prompt (:mod:`services.refiner.modifiers`). A posterior over the
targets is fed by the person's choices through a softmax choice model: P(like image i | target) is
proportional to exp(-beta * slots image i was asked to fill differently), the dislike to exp(+beta * ...).
Each round asks for distinct targets drawn in proportion to the posterior (Thompson sampling by Gumbel
top-k), so it exploits what the likes say and keeps exploring what they do not. The person's own prompt is the
prior: each slot value it names (read by the vocabulary's template, else by word) weighs as much as one choice,
so a round whose likes and dislikes say nothing about a slot (alike images, one liked, one disliked) keeps
asking near what the person wrote instead of anywhere.

The refiner is stateless: every round replays the session's history (:class:`RoundChoice`), so any
replica can run any round.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from philip.exploration import TOP_VALUES, RoundChoice, SlotBelief, SlotConstraints, Slots

VOCABULARY_FILE = "prompt_vocabulary.json"
# How sharply the choice model prefers the image that misses fewer slots; 2-4 simulate alike.
DEFAULT_BETA = 2.0
# The most targets (combinations of slot values) a vocabulary may span: the posterior is a dense array.
MAX_TARGETS = 250_000
Target = tuple[str, ...]  # one value per slot, in the vocabulary's slot order
Asked = tuple[str | None, ...]  # what an image was asked to show; None where its prompt did not say


def words(text: str) -> list[str]:
    return re.findall(r"[\w-]+", text.lower())


def _names(text_words: Sequence[str], value: str) -> bool:
    """Whether the words of ``value`` occur in ``text_words`` one after another (a value may be several words)."""
    value_words = words(value)
    n = len(value_words)
    return n > 0 and any(list(text_words[i:i + n]) == value_words for i in range(len(text_words) - n + 1))


@dataclass(frozen=True)
class SlotVocabulary:
    """Slots with their values, and slots that must differ; subclasses say how a prompt is written and read."""

    slots: Slots
    distinct: tuple[tuple[str, ...], ...] = ()

    def _check(self) -> None:
        names = self.names
        if len(set(names)) != len(names) or any(not values for _, values in self.slots):
            raise ValueError(f"slots {names} must be distinct, each with values")
        if any(n not in names for group in self.distinct for n in group):
            raise ValueError(f"distinct groups {self.distinct} must name slots of {names}")
        size = math.prod(len(values) for _, values in self.slots)
        if size > MAX_TARGETS:
            raise ValueError(f"the slots span {size:,} combinations, over the limit of {MAX_TARGETS:,}: drop values "
                             "or slots")

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.slots]

    def compose(self, prompt: str, target: Target) -> str:
        """The prompt that asks for ``target`` on top of the person's ``prompt``."""
        raise NotImplementedError

    def parse(self, prompt: str) -> Asked | None:
        """What a prompt of this vocabulary asks for; None when it names nothing."""
        raise NotImplementedError

    def named(self, prompt: str) -> dict[str, str]:
        """The slots the person's prompt fixes: it names exactly one of the slot's values, by word, and that value
        fills no other slot (so "a circle" fixes the shape; "red" could be either colour)."""
        text = words(prompt)
        out = {}
        for name, values in self.slots:
            hits = [v for v in values if _names(text, v)]
            elsewhere = any(hits and hits[0] in other for n, other in self.slots if n != name)
            if len(hits) == 1 and not elsewhere:
                out[name] = hits[0]
        return out

    def targets(self, prompt: str, constraints: SlotConstraints = SlotConstraints()) -> list[Target]:
        """Every target the prompt and the person's pins and bans allow (a pin overrides the prompt)."""
        fixed = self.named(prompt)
        pinned = {s for s, _ in constraints.pinned}
        choices = []
        for name, values in self.slots:
            base = [fixed[name]] if name in fixed and name not in pinned else list(values)
            choices.append(constraints.allowed(name, base) or base)
        index = {n: i for i, n in enumerate(self.names)}
        return [t for t in itertools.product(*choices)
                if all(len({t[index[n]] for n in group}) == len(group) for group in self.distinct)]


@dataclass(frozen=True)
class PromptVocabulary(SlotVocabulary):
    """A model's own caption ``template`` with ``{slot}`` fields (``prompt_vocabulary.json``): an explored image's
    prompt is the whole caption, what the person's prompt names kept."""

    template: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PromptVocabulary:
        slots = tuple((str(name), tuple(str(v) for v in values)) for name, values in data["slots"].items())
        vocabulary = cls(slots, tuple(tuple(g) for g in data.get("distinct", ())), str(data["template"]))
        fields = re.findall(r"{(\w+)}", vocabulary.template)
        if sorted(fields) != sorted(vocabulary.names):
            raise ValueError(f"template fields {fields} and slots {vocabulary.names} must match")
        vocabulary._check()
        return vocabulary

    @classmethod
    def load(cls, model_dir: str | Path) -> PromptVocabulary | None:
        """The model folder's vocabulary, or None when it has none."""
        path = Path(model_dir) / VOCABULARY_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a prompt vocabulary ({exc})") from None

    def caption(self, target: Target) -> str:
        return self.template.format(**dict(zip(self.names, target, strict=True)))

    def compose(self, prompt: str, target: Target) -> str:
        return self.caption(target)

    def parse(self, prompt: str) -> Asked | None:
        pattern = re.escape(self.template)
        for name, values in self.slots:
            alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})", 1)
        match = re.fullmatch(pattern, prompt.strip())
        return tuple(match.group(n) for n in self.names) if match else None


class PromptExplorer:
    """The posterior over the targets a prompt allows, and the targets to ask for next."""

    def __init__(self, vocabulary: SlotVocabulary, prompt: str, rng: np.random.Generator,
                 beta: float = DEFAULT_BETA, constraints: SlotConstraints = SlotConstraints()) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.vocabulary = vocabulary
        self.prompt = prompt
        self.targets = vocabulary.targets(prompt, constraints)
        self._index = {t: i for i, t in enumerate(self.targets)}
        self._codes = self._encode(self.targets)
        self.beta = beta
        self.rng = rng
        self.log_posterior = self._prompt_prior()

    def _prompt_prior(self) -> np.ndarray:
        """``beta`` per slot whose value the prompt names ("a red circle on a blue background": fg red, bg blue by
        the template; "a red circle": red in either colour slot, by word); slots the prompt fixes add the same to
        every target, so nothing."""
        said = self.vocabulary.parse(self.prompt)
        text = words(self.prompt)
        prior = np.zeros(len(self.targets))
        for k, (_, values) in enumerate(self.vocabulary.slots):
            named = {said[k]} if said is not None and said[k] is not None else {v for v in values if _names(text, v)}
            codes = [i for i, v in enumerate(values) if v in named]
            if codes:
                prior += self.beta * np.isin(self._codes[:, k], codes)
        return prior

    def _encode(self, targets: Sequence[Asked]) -> np.ndarray:
        """Value indices per slot; -1 where an image's prompt did not say."""
        positions = [{v: i for i, v in enumerate(values)} for _, values in self.vocabulary.slots]
        return np.array([[-1 if v is None else positions[k][v] for k, v in enumerate(t)]
                         for t in targets]).reshape(len(targets), len(positions))

    def propose(self, n: int) -> list[Target]:
        """``n`` distinct targets (fewer if fewer remain) drawn without replacement from the posterior."""
        keys = self.log_posterior + self.rng.gumbel(size=len(self.targets))
        return [self.targets[i] for i in np.argsort(-keys)[:n]]

    def update(self, asked: Sequence[Asked | None], liked: int | None, disliked: int | None) -> None:
        """One round's choice among the images; those not drawn from a caption (None) carry no evidence."""
        for i in (liked, disliked):
            if i is not None and not 0 <= i < len(asked):
                raise ValueError(f"liked {liked} / disliked {disliked} must index the {len(asked)} asked targets")
        known = [i for i, a in enumerate(asked) if a is not None]
        targets = [a for a in asked if a is not None]
        if not known:
            return
        codes = self._encode(targets)[None, :, :]
        misses = ((self._codes[:, None, :] != codes) & (codes >= 0)).sum(axis=2)  # unsaid slots carry nothing
        misses = misses.astype(float)  # targets x known images
        if liked in known:
            self.log_posterior += -self.beta * misses[:, known.index(liked)] - _logsumexp(-self.beta * misses)
        if disliked in known:
            self.log_posterior += self.beta * misses[:, known.index(disliked)] - _logsumexp(self.beta * misses)
        self.log_posterior -= self.log_posterior.max()  # keep it finite over many rounds

    def replay(self, history: Sequence[RoundChoice]) -> None:
        for choice in history:
            self.update([self.vocabulary.parse(p) for p in choice.prompts], choice.liked, choice.disliked)

    def _posterior(self) -> np.ndarray:
        p = np.exp(self.log_posterior - self.log_posterior.max())
        return np.asarray(p / p.sum())

    def probability(self, target: Target) -> float:
        """The posterior probability of one target (0 if the prompt rules it out)."""
        if target not in self._index:
            return 0.0
        return float(self._posterior()[self._index[target]])

    def beliefs(self, top: int = TOP_VALUES) -> list[SlotBelief]:
        """Each slot's most probable values (marginals of the posterior); slots the person's prompt fixes are left
        out (nothing was learned about them), pinned ones kept (probability 1)."""
        p = self._posterior()
        fixed = self.vocabulary.named(self.prompt)
        out = []
        for k, (name, values) in enumerate(self.vocabulary.slots):
            marginal = np.bincount(self._codes[:, k], weights=p, minlength=len(values))
            if name in fixed and np.count_nonzero(marginal) == 1:
                continue
            order = [int(i) for i in np.argsort(-marginal, kind="stable")[:top] if marginal[i] > 0]
            out.append(SlotBelief(name, tuple((values[i], round(float(marginal[i]), 4)) for i in order)))
        return out


def explore_round(vocabulary: SlotVocabulary, prompt: str, history: Sequence[RoundChoice], n: int, seed: int,
                  constraints: SlotConstraints = SlotConstraints()) -> tuple[list[str], list[SlotBelief]]:
    """The prompts of ``n`` targets to ask for next, from ``history``, and what the posterior believes; the same
    seed asks the same."""
    explorer = PromptExplorer(vocabulary, prompt, np.random.default_rng(seed), constraints=constraints)
    explorer.replay(history)
    return [vocabulary.compose(prompt, t) for t in explorer.propose(n)], explorer.beliefs()


def explored_prompts(vocabulary: SlotVocabulary, prompt: str, history: Sequence[RoundChoice], n: int,
                     seed: int) -> list[str]:
    """The prompts of :func:`explore_round` alone."""
    return explore_round(vocabulary, prompt, history, n, seed)[0]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return np.asarray(top + np.log(np.exp(x - top[:, None]).sum(axis=1)))
