"""`philip config`: every setting as its PHILIP_* variable, the environment's values, secrets masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PHILIP = Path(sys.executable).parent / "philip"


def _config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PHILIP_")}
    return subprocess.run([str(PHILIP), "config", *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


def test_config_json_shows_the_effective_settings_with_the_password_masked() -> None:
    result = _config("--json", PHILIP_REDIS_URL="redis://:hunter2@redis:6379/0", PHILIP_MAX_STREAMS="500")
    assert result.returncode == 0, result.stderr
    groups = json.loads(result.stdout)  # by concern, each setting under its variable's name
    assert groups["store"]["PHILIP_REDIS_URL"] == "redis://:***@redis:6379/0" and "hunter2" not in result.stdout
    assert groups["sessions"]["PHILIP_MAX_STREAMS"] == 500 and groups["sessions"]["PHILIP_SESSION_IDLE_S"] == 86_400.0
    assert groups["server"]["PHILIP_PORT"] == 50051  # a default
    assert sum(len(v) for v in groups.values()) == len({n for v in groups.values() for n in v}) >= 50


def test_an_invalid_setting_is_named_and_exits_2() -> None:
    result = _config(PHILIP_SESSION_STALE_S="0")
    assert result.returncode == 2
    assert "PHILIP_SESSION_STALE_S" in result.stdout + result.stderr
