"""A session's defaults: the feedback weights it gets when it names none.

They live in one place per model: the model folder's ``philip_defaults.json`` (the best setting
measured for that model, with the measurement), else the deployment's session defaults file
(``PHILIP_SESSION_DEFAULTS_PATH``, shipped as ``config/session_defaults.toml``), whose section is chosen
by the vocabulary exploration has: ``model_vocabulary`` (the model folder's own prompt vocabulary),
``modifier_vocabulary`` (``PHILIP_VOCABULARY_PATH``) or ``no_vocabulary``. Fields a file leaves out take
:class:`~philip.feedback_weights.FeedbackWeights`' built-in values (FABRIC's paper settings).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from philip.feedback_weights import WEIGHT_FIELDS, builtin_weights, complete

DEFAULTS_FILE = "philip_defaults.json"
SECTIONS = ("model_vocabulary", "modifier_vocabulary", "no_vocabulary")


def load_defaults(model_dir: str | Path, defaults_path: str | None,
                  section: str) -> tuple[dict[str, float], dict[str, float], str]:
    """The weights a session without any gets (every field set), what is laid over them for a session with
    uploaded references (``references``: only the fields it names), and where they came from."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    own = Path(model_dir) / DEFAULTS_FILE
    if own.is_file():
        data = _read(own)
        return _weights(own, data.get("weights", {})), _overlay(own, data.get("references", {})), str(own)
    if defaults_path:
        path = Path(defaults_path)
        data = _read(path)
        return (_weights(path, data.get(section, {})), _overlay(path, data.get("references", {})),
                f"{path} [{section}]")
    return builtin_weights(), {}, "built-in (FABRIC's paper settings)"


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read session defaults ({exc.strerror})") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: not session defaults ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not session defaults (a table of sections)")
    return data


def _overlay(path: Path, weights: Any) -> dict[str, float]:
    full = _weights(path, weights)
    return {k: full[k] for k in weights}


def _weights(path: Path, weights: Any) -> dict[str, float]:
    try:
        if not isinstance(weights, dict):
            raise ValueError("weights must be a table of numbers")
        unknown = set(weights) - set(WEIGHT_FIELDS)
        if unknown:
            raise ValueError(f"unknown weight fields {sorted(unknown)}; known: {', '.join(WEIGHT_FIELDS)}")
        return complete(weights)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not session defaults ({exc})") from None
