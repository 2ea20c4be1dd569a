"""A deployment's modifier vocabulary: prompt exploration for any checkpoint (``PHILIP_VOCABULARY_PATH``).

A TOML or JSON file of slots (medium, style, lighting, palette, composition...), each with values and a
``phrase`` that turns a value into words ("{value} lighting"); an explored image's prompt is the person's
prompt with one phrase per slot joined to it (``join``, e.g. ``"{prompt}, {modifiers}"``), leaving out the
slots the person's prompt already names. The refiner reads an explored prompt back by its phrases, so it
knows what it asked for after a prompt edit too::

    join = "{prompt}, {modifiers}"
    separator = ", "

    [slots.lighting]
    phrase = "{value} lighting"
    values = ["golden hour", "soft studio", "dramatic rim"]
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.refiner.explore import PromptVocabulary, SlotVocabulary, Target, words

MAX_SLOTS = 12
MAX_VALUES = 64  # per slot
MAX_VALUE_CHARS = 60


@dataclass(frozen=True)
class ModifierVocabulary(SlotVocabulary):
    """Slots whose phrases are joined to the person's prompt."""

    phrases: tuple[str, ...] = ()  # per slot, with a {value} field
    join: str = "{prompt}, {modifiers}"
    separator: str = ", "

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ModifierVocabulary:
        raw = data.get("slots")
        if not isinstance(raw, dict) or not raw:
            raise ValueError("needs a [slots.NAME] table per slot, each with values = [...]")
        if len(raw) > MAX_SLOTS:
            raise ValueError(f"takes 1-{MAX_SLOTS} slots, got {len(raw)}")
        slots, phrases = [], []
        for name, spec in raw.items():
            values = tuple(str(v) for v in spec.get("values", ()))
            if not 1 <= len(values) <= MAX_VALUES or any(not 1 <= len(v) <= MAX_VALUE_CHARS for v in values):
                raise ValueError(f"slot {name!r} takes 1-{MAX_VALUES} values of 1-{MAX_VALUE_CHARS} characters")
            phrase = str(spec.get("phrase", "{value}"))
            if "{value}" not in phrase:
                raise ValueError(f"slot {name!r}: phrase {phrase!r} needs a {{value}} field")
            slots.append((str(name), values))
            phrases.append(phrase)
        join, separator = str(data.get("join", cls.join)), str(data.get("separator", cls.separator))
        if "{prompt}" not in join or "{modifiers}" not in join or not separator.strip(" "):
            raise ValueError(f"join {join!r} needs {{prompt}} and {{modifiers}}; separator {separator!r} must not be "
                             "blank")
        vocabulary = cls(tuple(slots), tuple(tuple(g) for g in data.get("distinct", ())), tuple(phrases), join,
                         separator)
        vocabulary._check()
        rendered = [vocabulary._phrase(k, v) for k, (_, values) in enumerate(slots) for v in values]
        if len(set(rendered)) != len(rendered):
            raise ValueError("two slot values render the same phrase: the refiner could not tell them apart")
        return vocabulary

    @classmethod
    def load(cls, path: str | Path) -> ModifierVocabulary:
        path = Path(path)
        try:
            text = path.read_text()
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
            return cls.from_mapping(data)
        except OSError as exc:
            raise ValueError(f"PHILIP_VOCABULARY_PATH={path}: cannot read it ({exc.strerror})") from None
        except (ValueError, TypeError, AttributeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"PHILIP_VOCABULARY_PATH={path}: not a modifier vocabulary ({exc})") from None

    def _phrase(self, k: int, value: str) -> str:
        return self.phrases[k].format(value=value)

    def compose(self, prompt: str, target: Target) -> str:
        named = self.named(prompt)
        parts = [self._phrase(k, v) for k, (name, v) in enumerate(zip(self.names, target, strict=True))
                 if named.get(name) != v]
        return self.join.format(prompt=prompt, modifiers=self.separator.join(parts)) if parts else prompt

    def parse(self, prompt: str) -> tuple[str | None, ...] | None:
        segments = {s.strip().lower() for s in prompt.split(self.separator.strip() or self.separator)}
        named = self.named(prompt)
        asked: list[str | None] = []
        for k, (name, values) in enumerate(self.slots):
            hits = [v for v in values if self._phrase(k, v).strip().lower() in segments]
            asked.append(hits[0] if len(hits) == 1 else named.get(name))
        return tuple(asked) if any(a is not None for a in asked) else None


def load_vocabulary(model_dir: str | Path, vocabulary_path: str | None) -> tuple[SlotVocabulary | None, str]:
    """The model folder's own ``prompt_vocabulary.json``, else the deployment's modifier file (``""`` or None:
    none), with where it came from."""
    own = PromptVocabulary.load(model_dir)
    if own is not None:
        return own, str(Path(model_dir) / "prompt_vocabulary.json")
    if not vocabulary_path:
        return None, ""
    return ModifierVocabulary.load(vocabulary_path), vocabulary_path


__all__ = ["ModifierVocabulary", "load_vocabulary", "words"]
