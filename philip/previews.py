"""Previews of images while they denoise: a cheap linear latent->RGB map, or a full VAE decode; a model folder
holding a TAESD-style tiny decoder (:mod:`philip.models.tiny_decoder`) gets output-size previews from it instead of
the linear map (``encode_fast``), for a few ms each.

The linear map (a latent_channels x 3 matrix plus a bias) is what SD front-ends use for live
previews; its factors depend on the VAE, so we fit them by least squares against real decodes
of the model's own samples and keep them beside the model as ``preview_projection.json``,
tagged with a fingerprint of the VAE weights so a retrained model gets a fresh fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from philip.logs import get_logger
from philip.models.families import FLUX, family_of
from philip.models.latents import decode_pixels, grid_latents, packs_latents, unpack_latents
from philip.models.tiny_decoder import TinyDecoder, load_tiny_decoder

log = get_logger("philip.previews")

PROJECTION_FILE = "preview_projection.json"
# Varied colours and layouts so every latent direction the VAE uses shows up in the fit.
FIT_PROMPTS = (
    "a red circle on a blue background",
    "a yellow square on a green background",
    "a white triangle on a black background",
    "a purple star on an orange background",
    "a green circle on a white background",
    "a blue square on a yellow background",
    "an orange triangle on a purple background",
    "a black star on a red background",
)


def vae_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the VAE folder's files (names and bytes); "" when the folder has no VAE."""
    vae_dir = Path(model_dir) / "vae"
    if not vae_dir.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in vae_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@torch.inference_mode()
def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Full VAE decode of (scaled) latents to PIL images at output size."""
    pixels = decode_pixels(pipe, latents)
    images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images


@dataclass(frozen=True)
class PreviewEncoder:
    """Renders x0 estimates (scaled latents, B x C x h x w) as preview images."""

    weights: np.ndarray  # (latent_channels, 3): scaled latent -> RGB in [0, 1]
    bias: np.ndarray  # (3,)
    vae_fingerprint: str = ""
    tiny: TinyDecoder | None = field(default=None, compare=False, repr=False)  # the folder's, if it has one

    @classmethod
    def for_pipeline(cls, pipe: Any, model_dir: str | Path, *, fit_images: int = 8) -> PreviewEncoder:
        """The model's projection (kept: the fallback for inputs the tiny decoder cannot take) with the folder's
        tiny decoder when it has one."""
        return replace(cls._projection(pipe, model_dir, fit_images), tiny=load_tiny_decoder(model_dir, pipe))

    @classmethod
    def _projection(cls, pipe: Any, model_dir: str | Path, fit_images: int) -> PreviewEncoder:
        """The model's saved projection, or a fresh fit (saved beside the model when writable)."""
        path = Path(model_dir) / PROJECTION_FILE
        fingerprint = vae_fingerprint(model_dir)
        if path.is_file():
            saved = cls.load(path)
            if saved.vae_fingerprint == fingerprint:
                return saved
            log.info("previews.projection_stale", path=str(path))
        encoder = cls.fit(pipe, fit_images=fit_images, fingerprint=fingerprint)
        try:
            encoder.save(path)
        except OSError as exc:  # a read-only model volume is normal in a pod; refit next start
            log.warning("previews.projection_not_saved", path=str(path), error=str(exc))
        return encoder

    @classmethod
    @torch.inference_mode()
    def fit(cls, pipe: Any, *, fit_images: int = 8, steps: int = 8, fingerprint: str = "") -> PreviewEncoder:
        """Least-squares fit of RGB (decoded, downsampled to latent size) on latent pixels."""
        prompts = [FIT_PROMPTS[i % len(FIT_PROMPTS)] for i in range(fit_images)]
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(fit_images)]
        # Flux's pipeline defaults to 1024 px whatever the folder: fit at its VAE's training size (the others'
        # default is their native size already, so their call and fit stay as they were).
        side = int(pipe.vae.config.sample_size) if packs_latents(pipe) else 0
        size = {"height": side, "width": side} if side else {}
        latents = grid_latents(pipe, pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=generators,
                                          output_type="latent", **size).images, side, side)
        rgb = ((decode_pixels(pipe, latents).float() + 1) / 2).clamp(0, 1)
        small = F.adaptive_avg_pool2d(rgb, (int(latents.shape[-2]), int(latents.shape[-1])))
        x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).cpu()
        y = small.permute(0, 2, 3, 1).reshape(-1, 3).cpu()
        x1 = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
        solution = torch.linalg.lstsq(x1, y).solution.numpy()
        log.info("previews.projection_fitted", images=fit_images,
                 rmse=float(torch.sqrt(torch.mean((x1 @ torch.from_numpy(solution) - y) ** 2))))
        return cls(solution[:-1].astype(np.float32), solution[-1].astype(np.float32), fingerprint)

    def encode_linear(self, x0: torch.Tensor, size: tuple[int, int] | None = None) -> list[Image.Image]:
        """Latent-size RGB previews; ``size`` (width, height) upscales them, nearest neighbour."""
        latents = x0.detach().float().cpu().numpy().transpose(0, 2, 3, 1)  # B h w C
        rgb = np.clip(latents @ self.weights + self.bias, 0.0, 1.0)
        images = [Image.fromarray((pixels * 255).round().astype(np.uint8)) for pixels in rgb]
        if size is not None:
            images = [image.resize(size, Image.Resampling.NEAREST) for image in images]
        return images

    def encode_fast(self, x0: torch.Tensor) -> list[Image.Image]:
        """The cheap preview (``PREVIEW_MODE_LINEAR``, the default): the tiny decoder's output-size images when the
        model folder has one, else the linear projection at latent size."""
        if self.tiny is not None:
            return self.tiny.decode(x0)
        return self.encode_linear(x0)

    @staticmethod
    def encode_vae(pipe: Any, x0: torch.Tensor) -> list[Image.Image]:
        """Output-size previews by a full VAE decode of the x0 estimate."""
        return decode_latents(pipe, x0)

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "bias": self.bias.tolist(), "vae_fingerprint": self.vae_fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreviewEncoder:
        weights = np.asarray(data["weights"], dtype=np.float32)
        bias = np.asarray(data["bias"], dtype=np.float32)
        if weights.ndim != 2 or weights.shape[1] != 3 or bias.shape != (3,):
            raise ValueError(f"bad preview projection shapes {weights.shape} / {bias.shape}")
        return cls(weights, bias, str(data.get("vae_fingerprint", "")))

    @classmethod
    def load(cls, path: str | Path) -> PreviewEncoder:
        return cls.from_json(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        """Write atomically, so a concurrent reader never sees half a file."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".preview_projection.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_json(), f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def fit_preview_projection(model_dir: str | Path, device: str = "cpu", *, fit_images: int = 8) -> Path:
    """Fit (or refit) and save the model's preview projection; returns the file written."""
    from philip.models.pipelines import load_pipeline

    pipe = load_pipeline(model_dir, device)
    encoder = PreviewEncoder.fit(pipe, fit_images=fit_images, fingerprint=vae_fingerprint(model_dir))
    path = Path(model_dir) / PROJECTION_FILE
    encoder.save(path)
    return path


class UNetCapture:
    """Forward hook keeping the denoiser's latest (scaled input, timestep, prediction): a UNet's (``sample``,
    positional in the pipelines) or an SD3/Flux transformer's (``hidden_states``, by keyword), and for Flux the
    image tokens' positions (``img_ids``: row and column of each 2x2 patch), which give the latent grid's sides."""

    def __init__(self) -> None:
        self.latest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.img_ids: torch.Tensor | None = None

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        sample = args[0] if args else kwargs["sample"] if "sample" in kwargs else kwargs["hidden_states"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.latest = (sample, torch.as_tensor(timestep), output[0])
        self.img_ids = kwargs.get("img_ids")


def x0_from_prediction(sample: torch.Tensor, prediction: torch.Tensor, alpha_bar: torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """Clean-latent estimate from a variance-preserving noisy sample and the model's prediction.

    Every scheduler we serve feeds the UNet x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: DDIM/DPM/LCM
    keep latents that way, and Euler's ``scale_model_input`` divides its x0 + sigma eps by
    sqrt(sigma^2 + 1), which is the same thing. So alphas_cumprod[t] is all we need.
    """
    a = alpha_bar.sqrt()
    s = (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (sample - s * prediction) / a.clamp(min=1e-4)
    if prediction_type == "v_prediction":
        return a * sample - s * prediction
    if prediction_type == "sample":
        return prediction
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def x0_estimate(pipe: Any, capture: UNetCapture) -> torch.Tensor:
    """x0 of the UNet call ``capture`` saw last, with classifier-free guidance applied as the pipeline does."""
    if capture.latest is None:
        raise RuntimeError("no UNet call captured yet")
    sample, timestep, output = capture.latest
    if getattr(pipe, "do_classifier_free_guidance", False):  # Flux has no unconditional branch (nor the property)
        uncond, cond = output.chunk(2)
        output = uncond + pipe.guidance_scale * (cond - uncond)
        sample = sample.chunk(2)[0]
    if family_of(pipe).flow_matching:
        return _flow_x0(pipe, capture, sample, timestep, output)
    alphas = pipe.scheduler.alphas_cumprod
    index = int(torch.clamp(timestep.float().round(), 0, len(alphas) - 1).item())
    alpha_bar = alphas[index].to(device=sample.device, dtype=torch.float32)
    return x0_from_prediction(sample.float(), output.float(), alpha_bar, pipe.scheduler.config.prediction_type)


def _flow_x0(pipe: Any, capture: UNetCapture, sample: torch.Tensor, timestep: torch.Tensor,
             output: torch.Tensor) -> torch.Tensor:
    """Flow matching: x_t = (1 - sigma) x0 + sigma noise and the model predicts v = noise - x0, so x0 = x_t - sigma v
    (exactly the Euler step to sigma 0). SD3's transformer gets t = 1000 sigma, Flux's t / 1000 = sigma. Flux's
    tokens are unpacked into the latent grid (B x 16 x h x w) the previews and the VAE take."""
    t = timestep.reshape(-1)[0].float()  # one timestep per call, repeated per row
    sigma = t if family_of(pipe) is FLUX else t / float(pipe.scheduler.config.num_train_timesteps)
    x0 = sample.float() - sigma.to(sample.device) * output.float()
    if x0.ndim == 3:  # packed tokens; img_ids hold each token's (0, row, column)
        if capture.img_ids is None:
            raise RuntimeError("packed latents captured without their img_ids")
        ids = capture.img_ids.reshape(-1, 3)
        x0 = unpack_latents(x0, 2 * (int(ids[:, 1].max()) + 1), 2 * (int(ids[:, 2].max()) + 1))
    return x0
