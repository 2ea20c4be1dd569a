"""Train one adapter from a few reference images: DreamBooth-LoRA or textual inversion. Blocking torch
code, run on a worker thread.

Both methods add the token to the tokenizer and learn its embedding (initialised from the class
word), so the prompt names the subject with one word; LoRA additionally learns rank-r updates of
the UNet's attention projections (peft, saved in diffusers' LoRA format). Training state is
checkpointed every ``checkpoint_every`` steps into ``work_dir`` and a rerun resumes from it with
the same per-step random draws, so a job taken over by another worker ends where it would have.

Per family (``recipes.py``; what each trains: :mod:`philip.models.adapter_support`): SDXL puts the token into
both tokenizers and encoders and conditions its UNet as the pipeline does; SD3 and Flux train LoRA on the
transformer with the flow-matching loss, their encoders frozen. On a GPU the loss runs under bf16 autocast with
gradient checkpointing (the weights stay fp32, so the optimizer's updates are exact).
"""

from __future__ import annotations

import contextlib
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
from PIL import Image

from philip import metrics
from philip.logs import get_logger
from philip.models.adapter_support import method_refusal, token_slots
from philip.models.adapters import AdapterInfo, save_adapter
from philip.models.families import Family, detect_family
from philip.models.latents import encode_pixels
from philip.models.pipelines import load_pipeline, native_size
from philip.priority import DEVICE
from services.personalizer.new_token import NewToken
from services.personalizer.recipes import recipe_for

CHECKPOINT_FILE = "checkpoint.pt"
log = get_logger("services.personalizer.trainer")


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
    lora_targets: tuple[str, ...] = ()  # () = the family's (recipes.py): LORA_TARGETS on SD-1.x, attention else
    size: int = 0  # training side in pixels; 0 = the model's native size


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


def frozen_dtype(family: Family, device: str) -> torch.dtype:
    """The dtype the pipeline is loaded in for training. fp32 (exact, as SD-1.x always trained), except the frozen
    weights of LoRA-only families on a GPU: Flux's 12 B transformer alone is 48 GB in fp32, beyond a W7900 (48
    GiB) or an MI210 (64 GiB) with its T5; in bf16 it is half. Their LoRA weights are kept fp32 (``_add_lora``) and
    the loss runs under autocast."""
    if device.startswith("cuda") and not token_slots(family.name):
        return torch.bfloat16
    return torch.float32


class AdapterTrainer:
    """One training run. ``run`` returns the adapter folder's metadata; it raises ``TrainingStopped``
    when ``should_stop`` says so, leaving the last checkpoint for a later resume."""

    def __init__(self, model_dir: str | Path, config: TrainConfig, images: list[Image.Image],
                 work_dir: Path, device: str = "cpu") -> None:
        self.config = config
        self.work_dir = work_dir
        self.family = family = detect_family(model_dir)
        refusal = method_refusal(family, config.method)
        if refusal is not None:  # CreateAdapter refuses these first; a direct caller gets the same message
            raise ValueError(refusal)
        self.pipe = pipe = load_pipeline(model_dir, device, dtype=frozen_dtype(family, device))
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae"):
            if getattr(pipe, name, None) is not None:  # only the token rows and the LoRA learn
                getattr(pipe, name).requires_grad_(False)
        self.tokens = [NewToken(getattr(pipe, slot.tokenizer), getattr(pipe, slot.text_encoder), config.token,
                                config.class_word) for slot in token_slots(family.name)]
        params: list[dict[str, Any]] = []
        self.base_lrs: list[float] = []  # each parameter group's peak learning rate
        if self.tokens:
            params.append({"params": [t.embeddings for t in self.tokens], "lr": config.embedding_lr,
                           "weight_decay": 0.0})
            self.base_lrs.append(config.embedding_lr)
        self.prompt = config.prompt.format(token=config.token, class_word=config.class_word)
        size = config.size or native_size(pipe)
        self.recipe = recipe_for(family)(pipe, self.prompt, size)  # after the tokens: it may tokenize
        self.denoiser = self.recipe.denoiser
        if config.method == "lora":
            params.append({"params": self._add_lora(), "lr": config.lr, "weight_decay": 1e-2})
            self.base_lrs.append(config.lr)
        else:
            self.lora_params: list[torch.nn.Parameter] = []
        self.opt = torch.optim.AdamW(params)
        self.autocast = device.startswith("cuda")  # ROCm's torch says "cuda" too
        if self.autocast:  # activations dominate at 1024 px: recompute them in the backward pass
            self.denoiser.enable_gradient_checkpointing()  # type: ignore[operator]
        with torch.no_grad():
            self.latents = encode_pixels(pipe, _prepare(images, size).to(device, torch.float32)).float()
        self.step = 0
        self.micro_batch = config.batch  # halved on a GPU out-of-memory error (train_step)

    def _add_lora(self) -> list[torch.nn.Parameter]:
        from peft import LoraConfig

        cfg = self.config
        targets = cfg.lora_targets or self.recipe.lora_targets
        torch.manual_seed(cfg.seed)  # LoRA's random init: the same job always starts the same
        self.denoiser.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank,  # type: ignore[operator]
                                             init_lora_weights="gaussian", target_modules=list(targets)))
        self.lora_params = [p for p in self.denoiser.parameters() if p.requires_grad]
        for param in self.lora_params:  # on bf16 frozen weights peft makes them bf16: updates that small would vanish
            param.data = param.data.float()
        return self.lora_params

    # ---- checkpoints ---------------------------------------------------------------------------

    def _lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.denoiser).items()}

    def save_checkpoint(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        rows = [t.row for t in self.tokens]  # SD-1.x's one row as it always was; SDXL's two as a list
        _save_atomic({"step": self.step, "embedding": rows[0] if len(rows) == 1 else rows,
                      "lora": self._lora_state() if self.lora_params else None,
                      "opt": self.opt.state_dict()}, self.work_dir / CHECKPOINT_FILE)

    def resume(self) -> int | None:
        """Load the last checkpoint if there is one; returns its step."""
        path = self.work_dir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        state = torch.load(path, weights_only=True)
        rows = state["embedding"]
        for token, row in zip(self.tokens, [rows] if isinstance(rows, torch.Tensor) else rows, strict=True):
            token.restore(row)
        if state["lora"] is not None:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(self.denoiser, state["lora"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        return self.step

    # ---- training ------------------------------------------------------------------------------

    def _lr_scale(self) -> float:
        warm = min(1.0, (self.step + 1) / 20)
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.step / self.config.steps)))

    def train_step(self) -> float:
        """One optimizer step over ``config.batch`` samples, in micro-batches that fit the device: a GPU that runs
        out of memory halves the micro-batch and redoes the step (gradients accumulate, so the step is still over
        the whole batch), and later steps keep the size that fitted. The batch that fits a W7900 (48 GiB) or an
        MI210 (64 GiB) at 1024 px is found this way, not guessed."""
        while True:
            try:
                return self._step(self.micro_batch)
            except torch.OutOfMemoryError:
                if self.micro_batch == 1:
                    raise
                self.opt.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.micro_batch = max(1, self.micro_batch // 2)
                log.warning("training.micro_batch_halved", micro_batch=self.micro_batch, batch=self.config.batch,
                            step=self.step)

    def _step(self, micro: int) -> float:
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + self.step)  # a redone step redraws the same samples
        for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * self._lr_scale()
        idx = torch.randint(0, self.latents.shape[0], (cfg.batch,), generator=g)
        z0 = self.latents[idx]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast
                    else contextlib.nullcontext())
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in z0.split(micro):  # one chunk (the old single pass, bit for bit) unless memory ran short
            with autocast:
                loss = self.recipe.loss(chunk, g) * (chunk.shape[0] / z0.shape[0])
            loss.backward()
            total += float(loss.item())
        torch.nn.utils.clip_grad_norm_([*(t.embeddings for t in self.tokens), *self.lora_params], 1.0)
        self.opt.step()
        self.step += 1
        return total

    @torch.no_grad()
    def preview(self, seed: int = 0) -> Image.Image:
        self.denoiser.eval()
        try:
            out = self.pipe(self.prompt,
                            num_inference_steps=self.config.preview_steps,
                            generator=torch.Generator().manual_seed(seed), **self.recipe.preview_kwargs())
        finally:
            self.denoiser.train()
        return out.images[0]

    @property
    def embedding(self) -> torch.Tensor:
        """The learned embedding of the new token (in the first encoder; none for a LoRA-only family)."""
        if not self.tokens:
            raise ValueError(f"{self.family.label} adapters learn no token embedding (LoRA on the transformer only)")
        return self.tokens[0].row

    def _embeddings_to_save(self) -> torch.Tensor | dict[str, torch.Tensor] | None:
        """What the embeddings file holds: SD-1.x's one row, a row per encoder's key (SDXL), or none."""
        slots = token_slots(self.family.name)
        if not slots:
            return None
        if len(slots) == 1 and not slots[0].key:
            return self.embedding
        return {slot.key: token.row for slot, token in zip(slots, self.tokens, strict=True)}

    def run(self, on_progress: Callable[[TrainProgress], None],
            should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Train to ``config.steps`` (resuming if a checkpoint exists), reporting every step."""
        cfg = self.config
        resumed = self.resume()
        started = time.monotonic()
        self.denoiser.train()
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
        info = AdapterInfo(adapter_id, self.config.token, self.config.class_word, self.config.method, tenant,
                           self.family.name)
        save_adapter(folder, info, self._embeddings_to_save(), lora)
        return info
