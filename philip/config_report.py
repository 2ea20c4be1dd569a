"""`philip config`: the effective settings of this environment, as each PHILIP_* variable, secrets masked."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from philip.settings import Settings, env_name
from philip.store.redis_replies import redact_url

# Values that may carry a credential themselves (file paths are not secrets; what they hold is).
_URLS = frozenset({"redis_url"})


def effective_settings(settings: Settings,
                       environ: Mapping[str, str] = os.environ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {PHILIP_NAME: {"value": ..., "from": "env" | "default"}}}`` for every setting, passwords masked."""
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for group, values in settings.groups():
        report[group] = {}
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if f.name in _URLS and isinstance(value, str):
                value = redact_url(value)
            if isinstance(value, tuple):
                value = list(value)
            name = env_name(f.name)
            report[group][name] = {"value": value, "from": "env" if name in environ else "default"}
    return report


__all__ = ["effective_settings"]
