"""The layering contracts of pyproject.toml ([tool.importlinter]): kept by the code as it is, and broken
the moment a service imports another (a probe module is written into the generator for that)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint() -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_services_stand_side_by_side_over_philip() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_a_service_importing_another_breaks_the_contract() -> None:
    probe = REPO / "services" / "generator" / "_layering_probe.py"
    probe.write_text("from services.refiner import explore  # noqa: F401\n")
    try:
        result = _lint()
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "No service imports another service BROKEN" in result.stdout
    assert "services.generator._layering_probe -> services.refiner.explore" in result.stdout
