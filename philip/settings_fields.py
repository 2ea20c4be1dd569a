"""How a settings field is named, parsed and checked: the machinery under ``philip.settings``.

Every field ``name`` of every settings group is fed by the variable ``PHILIP_<NAME>``; a group checks its
own fields (type, then its rule) when it is built, so a bad value fails naming that variable.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

ENV_PREFIX = "PHILIP_"
Rule = tuple[Callable[[Any], bool], str]  # (predicate, why a value fails it)
UNSET: Any = object()


def env_name(field_name: str) -> str:
    """Environment variable that feeds ``field_name`` (e.g. ``port`` -> ``PHILIP_PORT``)."""
    return ENV_PREFIX + field_name.upper()


def field_types(group: type) -> dict[str, Any]:
    # Resolved lazily because ``from __future__ import annotations`` keeps them as strings.
    if group not in _TYPES:
        hints = typing.get_type_hints(group)
        _TYPES[group] = {f.name: hints[f.name] for f in dataclasses.fields(group)}
    return _TYPES[group]


_TYPES: dict[type, dict[str, Any]] = {}


def check_group(group: Any, rules: Mapping[str, Rule]) -> None:
    """Type- and range-check every field of ``group`` (a settings dataclass, from its __post_init__)."""
    types_ = field_types(type(group))
    for name, tp in types_.items():
        check_value(name, getattr(group, name), tp, rules.get(name))


def check_value(name: str, value: Any, tp: Any, rule: Rule | None, *, shown: Any = UNSET) -> None:
    """One field's type, then its rule; errors show ``shown`` (the raw input) if given."""
    display = value if shown is UNSET else shown
    _check_type(name, value, tp, display)
    if rule is not None and not rule[0](value):
        raise ValueError(f"{label(name)}={display!r}: {rule[1]}")


def label(name: str) -> str:
    """Name errors by env var when ``name`` is a field, or as given (already a var)."""
    return name if name.startswith(ENV_PREFIX) else env_name(name)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse(name: str, raw: str, tp: Any) -> Any:
    """Parse one environment string into the field's type."""
    inner, optional = _unwrap_optional(tp)
    text = raw.strip()
    if optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
        if typing.get_origin(inner) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if typing.get_origin(inner) is Literal:
            return text.lower()
        if inner is str:
            return text
    except ValueError:
        raise ValueError(f"{label(name)}={raw!r}: expected {_type_word(inner)}") from None
    raise TypeError(f"unsupported settings type {tp!r}")


def coerce(value: Any, tp: Any) -> Any:
    """Accept already-typed overrides; lists become tuples, ints are fine for floats."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple and isinstance(value, list):
        return tuple(value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_type(name: str, value: Any, tp: Any, display: Any) -> None:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if not optional:
            raise ValueError(f"{label(name)}={display!r}: a value is required")
        return
    origin = typing.get_origin(inner)
    if origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif origin is Literal:
        ok = isinstance(value, str)
    elif inner is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        # bool is an int subclass; PHILIP_PORT=True is surely a mistake.
        ok = isinstance(value, inner) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{label(name)}={display!r}: expected {_type_word(inner)}")


def _type_word(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "a comma-separated list"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


__all__ = ["ENV_PREFIX", "Rule", "check_group", "check_value", "coerce", "env_name", "field_types", "label", "parse"]
