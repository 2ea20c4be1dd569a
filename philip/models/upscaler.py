"""Run any ONNX super-resolution model with the usual NCHW float [0, 1] in/out contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from philip.logs import get_logger

log = get_logger("philip.models.upscaler")
CPU_PROVIDER = "CPUExecutionProvider"


class UpscalerError(RuntimeError):
    """The ONNX file is missing or does not look like a super-resolution model."""


def _refusal(missing: Sequence[str], asked: Sequence[str], where: str) -> UpscalerError:
    return UpscalerError(
        f"ONNX Runtime provider(s) {', '.join(missing)} asked for by PHILIP_ONNX_PROVIDERS={','.join(asked)} "
        f"{where}; install the matching onnxruntime build (e.g. onnxruntime-rocm / onnxruntime-migraphx), "
        f"change PHILIP_ONNX_PROVIDERS, or set PHILIP_ONNX_FALLBACK=cpu to serve upscales on the CPU")


def _usable(asked: Sequence[str], fallback: str) -> list[str]:
    """The asked-for providers this onnxruntime build has, in order; a missing one refuses to start unless
    ``fallback == "cpu"`` (a GPU pod silently upscaling on its CPU would be 100x slower, and nobody would know)."""
    available = ort.get_available_providers()
    missing = [p for p in asked if p not in available]
    if missing and fallback != "cpu":
        raise _refusal(missing, asked, f"are not in this onnxruntime build (it has {', '.join(available)})")
    chosen = [p for p in asked if p in available]
    return chosen if CPU_PROVIDER in chosen else [*chosen, CPU_PROVIDER]


def _check_used(asked: Sequence[str], used: Sequence[str], fallback: str) -> None:
    """A provider the build has can still fail to start (no device, a driver mismatch): ONNX Runtime then drops it
    with only a warning of its own. Same refusal as a missing one; both lists are logged either way."""
    log.info("upscaler.providers", asked=list(asked), used=list(used), fallback=fallback or "none")
    dropped = [p for p in asked if p not in used]
    if dropped and fallback != "cpu":
        raise _refusal(dropped, asked, f"did not start (the session uses {', '.join(used)})")
    if dropped:
        log.warning("upscaler.provider_fallback", dropped=dropped, used=list(used))


class OnnxUpscaler:
    """x-N upscaler; N is read from the model's static shapes or found by a probe run."""

    def __init__(self, path: str | Path, providers: Sequence[str] = (CPU_PROVIDER,), tile: int = 128,
                 threads: int | None = None, fallback: str = "") -> None:
        path = Path(path)
        if not path.is_file():
            raise UpscalerError(f"upscaler model {path} not found; train it with `philip train-upscaler`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=_usable(providers, fallback))
        self.providers = self.session.get_providers()
        _check_used(providers, self.providers, fallback)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise UpscalerError(f"{path}: expected one NCHW input, got {[i.shape for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.tile = tile
        self.scale = self._read_scale(inputs[0].shape, outputs[0].shape)

    def _read_scale(self, in_shape: list, out_shape: list) -> int:
        h_in, h_out = in_shape[2], out_shape[2]
        if isinstance(h_in, int) and isinstance(h_out, int) and h_in > 0:
            self.static_size: int | None = h_in  # a static model takes exactly its own size
            return h_out // h_in
        self.static_size = None
        probe = np.zeros((1, 3, 16, 16), dtype=np.float32)
        out = self.session.run([self.output_name], {self.input_name: probe})[0]
        return int(out.shape[2] // 16)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def upscale(self, image: Image.Image, progress: Callable[[int, int], None] | None = None) -> Image.Image:
        """Upscale tile by tile (so any size fits in memory), reporting (done, total) tiles.

        Each tile is run with `pad` pixels of context around it and only its core is kept, so
        seams do not show. A static-shape model gets windows of exactly its input size.
        """
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        h, w, _ = arr.shape
        s, win = self.scale, self.static_size
        pad = 8 if win is None else min(8, win // 4)
        core = self.tile if win is None else win - 2 * pad
        out = np.zeros((h * s, w * s, 3), dtype=np.float32)
        tiles = [(y, x) for y in range(0, h, core) for x in range(0, w, core)]
        for k, (y, x) in enumerate(tiles):
            y0, x0 = max(0, y - pad), max(0, x - pad)
            if win is None:
                patch = arr[y0 : min(h, y + core + pad), x0 : min(w, x + core + pad)]
            else:
                y0, x0 = max(0, min(y0, h - win)), max(0, min(x0, w - win))
                patch = arr[y0 : y0 + win, x0 : x0 + win]
                short_y, short_x = win - patch.shape[0], win - patch.shape[1]
                patch = np.pad(patch, ((0, short_y), (0, short_x), (0, 0)), mode="edge")
            up = self._run(np.ascontiguousarray(patch.transpose(2, 0, 1)[None]))[0].transpose(1, 2, 0)
            ty, tx = (y - y0) * s, (x - x0) * s
            hh, ww = min(core, h - y) * s, min(core, w - x) * s
            out[y * s : y * s + hh, x * s : x * s + ww] = up[ty : ty + hh, tx : tx + ww]
            if progress is not None:
                progress(k + 1, len(tiles))
        return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
