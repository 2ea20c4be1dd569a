"""A prompt explorer: asks for concrete targets and learns from which the user likes (not in the services yet).

FABRIC and seed steering are blind: they copy a liked image whole and cannot tell its right attributes
from its wrong ones (`philip eval feedback-bound`). An explorer is not blind because it chose what to
ask for: it writes each image's full caption ("a red circle on a blue background") from philip-tiny's
vocabulary, keeping what the user's prompt already names, so it knows what every image was asked to
show without reading the images. It keeps a posterior over the (fg, bg, shape) targets, fed by the
user's choices through a softmax choice model: P(like image i | target) is proportional to
exp(-beta * attributes of the target that image i was not asked to have), and the dislike to
exp(+beta * ...). Each round asks for distinct targets drawn in proportion to the posterior (Thompson
sampling by Gumbel top-k), so it exploits what the likes say and keeps exploring what they do not.
"""

from __future__ import annotations

import itertools

import numpy as np

from philip.tiny.dataset import COLOR_NAMES, TRAIN_SHAPES, full_caption

Target = tuple[str, str, str]  # fg, bg, shape
# How sharply the choice model prefers the image that misses fewer attributes; 2-4 simulate alike.
DEFAULT_BETA = 2.0


class PromptExplorer:
    """The posterior over the targets ``prompt`` allows, and the captions to ask for next."""

    def __init__(self, prompt: str, rng: np.random.Generator, beta: float = DEFAULT_BETA) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        words = set(prompt.lower().replace(",", " ").split())
        shapes = [s for s in TRAIN_SHAPES if s in words] or list(TRAIN_SHAPES)  # the prompt's shape is fixed
        self.targets: list[Target] = [(fg, bg, shape) for fg, bg in itertools.permutations(COLOR_NAMES, 2)
                                      for shape in shapes]
        self._codes = np.array([[COLOR_NAMES.index(fg), COLOR_NAMES.index(bg), TRAIN_SHAPES.index(shape)]
                                for fg, bg, shape in self.targets])
        self.log_posterior = np.zeros(len(self.targets))
        self.beta = beta
        self.rng = rng

    def propose(self, n: int) -> list[Target]:
        """``n`` distinct targets (fewer if fewer remain) drawn without replacement from the posterior."""
        keys = self.log_posterior + self.rng.gumbel(size=len(self.targets))
        return [self.targets[i] for i in np.argsort(-keys)[:n]]

    def update(self, asked: list[Target], liked: int, disliked: int | None) -> None:
        """One round's choice: ``asked[liked]`` was liked and ``asked[disliked]`` (if any) disliked."""
        if not 0 <= liked < len(asked) or (disliked is not None and not 0 <= disliked < len(asked)):
            raise ValueError(f"liked {liked} / disliked {disliked} must index the {len(asked)} asked targets")
        asked_codes = np.array([[COLOR_NAMES.index(fg), COLOR_NAMES.index(bg), TRAIN_SHAPES.index(shape)]
                                for fg, bg, shape in asked])
        misses = (self._codes[:, None, :] != asked_codes[None, :, :]).sum(axis=2).astype(float)  # targets x asked
        self.log_posterior += -self.beta * misses[:, liked] - _logsumexp(-self.beta * misses)
        if disliked is not None:
            self.log_posterior += self.beta * misses[:, disliked] - _logsumexp(self.beta * misses)
        self.log_posterior -= self.log_posterior.max()  # keep it finite over many rounds

    def probability(self, target: Target) -> float:
        """The posterior probability of one target (0 if the prompt rules it out)."""
        if target not in self.targets:
            return 0.0
        p = np.exp(self.log_posterior - self.log_posterior.max())
        return float(p[self.targets.index(target)] / p.sum())

    @staticmethod
    def caption(target: Target) -> str:
        fg, bg, shape = target
        return full_caption(fg, shape, bg)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return np.asarray(top + np.log(np.exp(x - top[:, None]).sum(axis=1)))
