"""The Dockerfiles (deploy/docker), checked without a Docker engine: pinned bases, COPY sources
that exist and survive .dockerignore, no models baked in, and an entrypoint that is a real
`philip` command line."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, Rendered

DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("Dockerfile.*"))
PHILIP = Path(sys.executable).parent / "philip"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def ignored(relative: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for a top-level path (last matching pattern wins, ! re-includes)."""
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(relative.rstrip("/"), pattern.lstrip("!").rstrip("/")):
            result = not negated
    return result


def dockerignore() -> list[str]:
    text = (REPO / ".dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_there_is_a_rocm_and_a_cpu_image() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.rocm"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned(dockerfile: Path) -> None:
    bases = [args.split()[0] for op, args in instructions(dockerfile) if op == "FROM"]
    assert bases
    for base in bases:
        tag = base.rsplit("/", 1)[-1].partition(":")[2]
        assert "@" in base or (tag and tag != "latest" and re.search(r"\d", tag)), f"unpinned base {base!r}"
    if dockerfile.name.endswith("rocm"):
        python = re.fullmatch(r"rocm/pytorch:rocm[\d.]+_ubuntu[\d.]+_py3\.(\d+)_pytorch_release_[\d.]+", bases[-1])
        assert python, f"a full rocm/pytorch tag: {bases[-1]!r}"
        assert int(python.group(1)) >= 11, "pyproject requires python >= 3.11"
    else:
        assert bases[-1].startswith("python:3.12")
        assert any("torch==2.13.0" in args for op, args in instructions(dockerfile) if op == "RUN")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_context(dockerfile: Path) -> None:
    patterns = dockerignore()
    copies = [shlex.split(args) for op, args in instructions(dockerfile) if op in ("COPY", "ADD")]
    assert copies
    for words in copies:
        assert not any(w.startswith("--from") for w in words), "single-stage: everything comes from the context"
        sources = [w for w in words[:-1] if not w.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"
            assert not ignored(source, patterns), f"{dockerfile.name}: COPY {source}: excluded by .dockerignore"
            assert not source.rstrip("/").startswith("models"), "models are mounted, never baked in"
    assert ignored("models", patterns), ".dockerignore keeps models/ out of the build context"
    assert ignored(".venv", patterns) and ignored(".git", patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_a_real_philip_command(dockerfile: Path) -> None:
    found = dict(instructions(dockerfile))
    assert json.loads(found["ENTRYPOINT"]) == ["philip"]
    command = json.loads(found["CMD"])
    assert command[0] == "serve"
    assert re.fullmatch(r"\d+(:\d+)?", found["USER"]), "numeric USER, so runAsNonRoot can verify it"
    if not PHILIP.is_file():
        pytest.skip(f"{PHILIP} not installed")
    result = subprocess.run([str(PHILIP), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_exposes_the_ports_the_pods_open(dockerfile: Path, rendered: dict[str, Rendered]) -> None:
    """EXPOSE lists gRPC (50051) and the HTTP edge (8080, docs/HTTP.md): every containerPort of a
    `philip` container in the manifests, and nothing else."""
    exposed = {int(word.split("/")[0]) for op, args in instructions(dockerfile) if op == "EXPOSE"
               for word in args.split()}
    assert {50051, 8080} <= exposed, f"{dockerfile.name}: EXPOSE {sorted(exposed)}"
    for r in rendered.values():
        ports = {p["containerPort"] for _, c in r.containers() if c["image"].split(":")[0].endswith("/philip")
                 for p in c.get("ports", [])}
        assert exposed == ports, f"{dockerfile.name}: EXPOSE {sorted(exposed)}, overlays/{r.overlay} {sorted(ports)}"


def test_pod_args_are_real_philip_commands(rendered: dict[str, Rendered]) -> None:
    """The Deployments' args (`serve <role>`) are a command line of the image's entrypoint."""
    if not PHILIP.is_file():
        pytest.skip(f"{PHILIP} not installed")
    for r in rendered.values():
        args = {tuple(c["args"]) for _, c in r.containers() if c["image"].split(":")[0].endswith("/philip")}
        assert args == {("serve", role) for role in ("gateway", "generator", "refiner", "personalizer")}
    result = subprocess.run([str(PHILIP), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "role" in result.stdout
