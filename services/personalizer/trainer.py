"""Train one adapter from a few reference images: DreamBooth-LoRA or textual inversion. Blocking torch
code, run on a worker thread.

Both methods add the token to the tokenizer and learn its embedding (initialised from the class
word), so the prompt names the subject with one word; LoRA additionally learns rank-r updates of
the UNet's attention projections (peft, saved in diffusers' LoRA format). Training state is
checkpointed every ``checkpoint_every`` steps into ``work_dir`` and a rerun resumes from it with
the same per-step random draws, so a job taken over by another worker ends where it would have.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from philip import metrics
from philip.models.adapters import AdapterInfo, save_adapter, token_in_vocabulary
from philip.models.families import SD, detect_family
from philip.models.pipelines import load_pipeline, native_size
from philip.priority import DEVICE

# Attention projections (what DreamBooth-LoRA adapts) plus the transformer blocks' in/out and
# feed-forward projections and the ResNet convolutions: philip-tiny never drew a star, and on
# the star evaluation attention alone reached a subject rate of 0.05-0.21, +proj/ff 0.29,
# +convolutions 0.62 (600 steps, rank 8). Every name is one diffusers' LoRA loader maps.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2")
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True, slots=True)
class TrainConfig:
    token: str
    class_word: str
    method: str = "lora"  # "lora" | "textual_inversion"
    steps: int = 500
    rank: int = 8
    lr: float = 5e-3
    embedding_lr: float = 2e-2
    batch: int = 8
    seed: int = 0
    checkpoint_every: int = 50
    preview_every: int = 100  # 0 = none
    preview_steps: int = 8
    # The instance prompt. The token alone carries the subject (its embedding starts as the class
    # word's), so "a {token} on a red background" works as well as "a {token} {class_word} ...".
    prompt: str = "a {token}"
    lora_targets: tuple[str, ...] = LORA_TARGETS


DEFAULT_STEPS = {"lora": 500, "textual_inversion": 500}


@dataclass(frozen=True, slots=True)
class TrainProgress:
    step: int
    total: int
    loss: float
    preview: Image.Image | None = None
    resumed_from: int | None = None


class TrainingStopped(Exception):
    """``should_stop`` returned True (cancelled, lost the job, or shutting down); the checkpoint is kept."""


def _prepare(images: list[Image.Image], size: int) -> torch.Tensor:
    """Centre-crop to square, resize to the model's native size, and add horizontal flips: (2n, 3, s, s)."""
    out = []
    for image in images:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        square = image.convert("RGB").crop((left, top, left + side, top + side))
        square = square.resize((size, size), Image.Resampling.LANCZOS)
        arr = torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        out += [arr, arr.flip(-1)]
    return torch.stack(out)


def _save_atomic(obj: Any, path: Path) -> None:
    # A temporary name of this writer's own: a worker that lost the job may still be saving into the same work
    # folder as the one that took it over, and two writers of one temporary file would corrupt it.
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class AdapterTrainer:
    """One training run. ``run`` returns the adapter folder's metadata; it raises ``TrainingStopped``
    when ``should_stop`` says so, leaving the last checkpoint for a later resume."""

    def __init__(self, model_dir: str | Path, config: TrainConfig, images: list[Image.Image],
                 work_dir: Path, device: str = "cpu") -> None:
        self.config = config
        self.work_dir = work_dir
        family = detect_family(model_dir)
        if family is not SD:  # one text encoder, no added conditions: what this trainer knows
            raise ValueError(f"training adapters on {family.label} models is not supported yet (issue 21); "
                             "only SD-1.x/2.x folders train")
        self.pipe = pipe = load_pipeline(model_dir, device, dtype=torch.float32)
        tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
        if token_in_vocabulary(tokenizer, config.token) or tokenizer.add_tokens(config.token) != 1:
            raise ValueError(f"token {config.token!r} is already in the model's vocabulary; choose another")
        self.token_id = tokenizer.convert_tokens_to_ids(config.token)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set below
        embeddings = text_encoder.get_input_embeddings().weight
        class_ids = tokenizer(config.class_word, add_special_tokens=False).input_ids
        text_encoder.requires_grad_(False)
        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        with torch.no_grad():
            embeddings[self.token_id] = embeddings[class_ids].mean(0)
        # Only the new token's row learns: the others' gradients are zeroed, and with Adam and no
        # weight decay a row whose gradient is always zero never moves.
        embeddings.requires_grad_(True)
        row_mask = torch.zeros(embeddings.shape[0], 1, dtype=embeddings.dtype, device=embeddings.device)
        row_mask[self.token_id] = 1.0
        embeddings.register_hook(lambda grad: grad * row_mask)
        self.embeddings = embeddings
        params: list[dict[str, Any]] = [{"params": [self.embeddings], "lr": config.embedding_lr, "weight_decay": 0.0}]
        if config.method == "lora":
            from peft import LoraConfig

            torch.manual_seed(config.seed)  # LoRA's random init: the same job always starts the same
            pipe.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                             target_modules=list(config.lora_targets)))
            self.lora_params = [p for p in pipe.unet.parameters() if p.requires_grad]
            params.append({"params": self.lora_params, "lr": config.lr, "weight_decay": 1e-2})
        else:
            self.lora_params = []
        self.opt = torch.optim.AdamW(params)
        self.noise_scheduler = _train_scheduler(pipe)
        size = native_size(pipe)
        with torch.no_grad():
            pixels = _prepare(images, size).to(device, torch.float32)
            self.latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        self.prompt = config.prompt.format(token=config.token, class_word=config.class_word)
        self.prompt_ids = tokenizer(self.prompt, padding="max_length",
                                    max_length=tokenizer.model_max_length, truncation=True,
                                    return_tensors="pt").input_ids.to(device)
        self.step = 0

    # ---- checkpoints ---------------------------------------------------------------------------

    def _lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.pipe.unet).items()}

    def save_checkpoint(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _save_atomic({"step": self.step, "embedding": self.embedding,
                      "lora": self._lora_state() if self.lora_params else None,
                      "opt": self.opt.state_dict()}, self.work_dir / CHECKPOINT_FILE)

    def resume(self) -> int | None:
        """Load the last checkpoint if there is one; returns its step."""
        path = self.work_dir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        state = torch.load(path, weights_only=True)
        with torch.no_grad():
            self.embeddings[self.token_id] = state["embedding"]
        if state["lora"] is not None:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(self.pipe.unet, state["lora"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        return self.step

    # ---- training ------------------------------------------------------------------------------

    def _lr_scale(self) -> float:
        warm = min(1.0, (self.step + 1) / 20)
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.step / self.config.steps)))

    def train_step(self) -> float:
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + self.step)
        for group, base in zip(self.opt.param_groups, (cfg.embedding_lr, cfg.lr), strict=False):
            group["lr"] = base * self._lr_scale()
        idx = torch.randint(0, self.latents.shape[0], (cfg.batch,), generator=g)
        z0 = self.latents[idx]
        noise = torch.randn(z0.shape, generator=g).to(z0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (cfg.batch,), generator=g)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        hidden = self.pipe.text_encoder(self.prompt_ids.expand(cfg.batch, -1))[0]
        pred = self.pipe.unet(zt, t.to(zt.device), hidden).sample
        loss = F.mse_loss(pred.float(), target.float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.embeddings, *self.lora_params], 1.0)
        self.opt.step()
        self.step += 1
        return float(loss.item())

    @torch.no_grad()
    def preview(self, seed: int = 0) -> Image.Image:
        self.pipe.unet.eval()
        try:
            out = self.pipe(self.prompt,
                            num_inference_steps=self.config.preview_steps,
                            generator=torch.Generator().manual_seed(seed))
        finally:
            self.pipe.unet.train()
        return out.images[0]

    @property
    def embedding(self) -> torch.Tensor:
        """The learned embedding of the new token."""
        return self.embeddings[self.token_id].detach().clone()

    def run(self, on_progress: Callable[[TrainProgress], None],
            should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Train to ``config.steps`` (resuming if a checkpoint exists), reporting every step."""
        cfg = self.config
        resumed = self.resume()
        started = time.monotonic()
        self.pipe.unet.train()
        if resumed is not None:
            on_progress(TrainProgress(self.step, cfg.steps, float("nan"), resumed_from=resumed))
        loss = float("nan")
        while self.step < cfg.steps:
            DEVICE.wait_for_turn(should_stop)  # a person's round goes first
            if should_stop():
                raise TrainingStopped(f"stopped at step {self.step}")
            step_started = time.monotonic()
            loss = self.train_step()
            metrics.TRAINING_STEP_SECONDS.observe(time.monotonic() - step_started)
            preview = None
            if cfg.preview_every and (self.step % cfg.preview_every == 0 or self.step == cfg.steps):
                preview = self.preview()
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
            on_progress(TrainProgress(self.step, cfg.steps, loss, preview))
        return {"final_loss": loss, "train_s": time.monotonic() - started, "resumed_from": resumed}

    def export(self, folder: Path, adapter_id: str, tenant: str = "") -> AdapterInfo:
        """Write the adapter files (diffusers formats) into ``folder``."""
        # PEFT's own key format (lora_A / lora_B) throughout. Converting to the old diffusers names renamed only
        # the attention projections, and diffusers' loader, which judges the format by the first key, then
        # silently skipped them: the served adapter lost its attention LoRA.
        lora = self._lora_state() if self.lora_params else None
        info = AdapterInfo(adapter_id, self.config.token, self.config.class_word, self.config.method, tenant)
        save_adapter(folder, info, self.embedding, lora)
        return info


def _train_scheduler(pipe: Any) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)
