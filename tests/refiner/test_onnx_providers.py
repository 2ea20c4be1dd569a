"""ONNX Runtime providers of the x4 upscaler: an asked-for provider this build lacks refuses to start, naming the
settings, unless PHILIP_ONNX_FALLBACK=cpu; both the asked and the used lists are logged."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from philip.models.upscaler import OnnxUpscaler, UpscalerError

MODEL = Path(__file__).resolve().parents[2] / "models" / "philip-tiny-x4.onnx"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="models/philip-tiny-x4.onnx not trained")
ASKED = ("ROCMExecutionProvider", "CPUExecutionProvider")


def test_missing_gpu_provider_refuses_to_start() -> None:
    with pytest.raises(UpscalerError) as error:
        OnnxUpscaler(MODEL, providers=ASKED, threads=1)
    message = str(error.value)
    assert "ROCMExecutionProvider" in message
    assert "PHILIP_ONNX_PROVIDERS" in message and "PHILIP_ONNX_FALLBACK=cpu" in message


def test_cpu_fallback_serves_and_logs_both_lists() -> None:
    with capture_logs() as logs:
        upscaler = OnnxUpscaler(MODEL, providers=("ROCMExecutionProvider",), threads=1, fallback="cpu")
    assert upscaler.providers == ["CPUExecutionProvider"]
    assert upscaler.scale == 4
    used = next(entry for entry in logs if entry["event"] == "upscaler.providers")
    assert used["asked"] == ["ROCMExecutionProvider"] and used["used"] == ["CPUExecutionProvider"]
    assert any(entry["event"] == "upscaler.provider_fallback" for entry in logs)


def test_cpu_only_is_unchanged() -> None:
    with capture_logs() as logs:
        upscaler = OnnxUpscaler(MODEL, threads=1)
    assert upscaler.providers == ["CPUExecutionProvider"]
    assert not any(entry["event"] == "upscaler.provider_fallback" for entry in logs)


def test_the_refiner_refuses_before_loading_its_model(tmp_path: Path) -> None:
    from philip.settings import Settings
    from services.refiner.server import open_refiner

    settings = Settings.from_env({"PHILIP_ONNX_PROVIDERS": "ROCMExecutionProvider,CPUExecutionProvider",
                                  "PHILIP_UPSCALER_PATH": str(MODEL), "PHILIP_MODEL_DIR": str(tmp_path / "none")})
    with pytest.raises(UpscalerError, match="PHILIP_ONNX_FALLBACK=cpu"):
        open_refiner(settings)  # the model folder does not exist: the refusal came first
