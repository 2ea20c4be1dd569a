"""The ROCm image's torch and onnxruntime, checked without a Docker engine: torch is the tests' version from
the ROCm wheel index (never PyPI's CUDA build), and onnxruntime is AMD's build with a GPU provider, not PyPI's
CPU-only one."""

from __future__ import annotations

import re
import tomllib

from tests.deploy.conftest import REPO
from tests.deploy.test_docker import instructions

ROCM = REPO / "deploy" / "docker" / "Dockerfile.rocm"


def _args() -> dict[str, str]:
    return dict(args.split("=", 1) for op, args in instructions(ROCM) if op == "ARG" and "=" in args)


def test_torch_is_the_tests_version_from_the_rocm_index() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(d for d in deps if d.startswith("torch=="))
    assert f"torch=={_args()['TORCH_VERSION']}" == pinned
    runs = " ".join(args for op, args in instructions(ROCM) if op == "RUN")
    assert re.search(r'torch==\$\{TORCH_VERSION\}" --index-url "https://download\.pytorch\.org/whl/\$\{ROCM_WHEELS\}"',
                     runs)
    assert _args()["ROCM_WHEELS"].startswith("rocm")


def test_onnxruntime_is_amds_build() -> None:
    package = _args()["ORT_PACKAGE"]
    assert re.fullmatch(r"onnxruntime-(migraphx|rocm)==[\d.]+(post\d+)?", package)
    runs = " ".join(args for op, args in instructions(ROCM) if op == "RUN")
    assert "startswith(('torch', 'onnxruntime'))" in runs  # PyPI's CPU onnxruntime is never installed beside it
    assert "MIGraphXExecutionProvider" in runs  # checked at build time
