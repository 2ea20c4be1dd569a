"""Train philip-tiny (VAE, then text encoder + UNet jointly) and export a diffusers folder.

Every stage checkpoints atomically into ``work_dir`` and resumes where it stopped; data,
timesteps and noise are drawn from generators seeded by (seed, step), so an interrupted
run continues as if it had never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from philip.tiny import architecture
from philip.tiny.dataset import TRAIN_SEED, ShapesDataset, caption_for, prompt_vocabulary, render, to_array


@dataclass
class TinyTrainConfig:
    out_dir: Path = Path("models/philip-tiny")
    work_dir: Path = Path("models/.philip-tiny-train")
    seed: int = TRAIN_SEED
    vae_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 1e-3
    pool_size: int = 16_000
    steps: int = 2_400
    batch: int = 64
    lr: float = 6e-4
    warmup: int = 200
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    unet_channels: tuple[int, int, int] = (64, 128, 128)
    text_hidden: int = 128
    text_layers: int = 3
    threads: int = 2
    # Continue from an exported philip-tiny folder: its VAE is kept, UNet + text encoder go on training.
    init_from: Path | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"], d["work_dir"] = str(self.out_dir), str(self.work_dir)
        d["init_from"] = str(self.init_from) if self.init_from else None
        return d


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(work_dir: Path, record: dict[str, Any]) -> None:
    with (work_dir / "log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def _images(ds: ShapesDataset, indices: Iterable[int]) -> torch.Tensor:
    arr = np.stack([to_array(render(ds.spec(int(i)))) for i in indices])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1


def train_vae(cfg: TinyTrainConfig, progress: Progress) -> Any:
    if cfg.init_from is not None:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(cfg.init_from / "vae").eval().requires_grad_(False)
    vae = architecture.vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt = cfg.work_dir / "vae.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    ds = ShapesDataset(cfg.seed + 1)
    task = progress.add_task("vae", total=cfg.vae_steps, completed=step, info="")
    while step < cfg.vae_steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        lr = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x = _images(ds, range(step * cfg.vae_batch, (step + 1) * cfg.vae_batch))
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        progress.update(task, completed=step, info=f"loss {loss.item():.4f}")
        if step % 50 == 0 or step == cfg.vae_steps:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            _log(cfg.work_dir, {"stage": "vae", "step": step, "loss": loss.item(), "t": time.time()})
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_pool(cfg: TinyTrainConfig, vae: Any, progress: Progress) -> tuple[torch.Tensor, float]:
    """Latents (posterior means) of a fixed pool of training images, and the VAE scale."""
    path = cfg.work_dir / "latents.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        return state["latents"], state["scale"]
    ds = ShapesDataset(cfg.seed)
    task = progress.add_task("encode pool", total=cfg.pool_size, info="")
    chunks = []
    for start in range(0, cfg.pool_size, 256):
        idx = range(start, min(start + 256, cfg.pool_size))
        chunks.append(vae.encode(_images(ds, idx)).latent_dist.mean)
        progress.update(task, completed=idx.stop, info="")
    latents = torch.cat(chunks)
    scale = float(1.0 / latents.std())
    _save_atomic({"latents": latents, "scale": scale}, path)
    return latents, scale


class _Tokens:
    """Caches token ids per caption string (there are only a few hundred)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.cache:
                self.cache[c] = self.tokenizer(
                    c, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True
                ).input_ids
        return torch.tensor([self.cache[c] for c in captions])


def train_diffusion(
    cfg: TinyTrainConfig, vae: Any, latents: torch.Tensor, scale: float, progress: Progress,
    on_checkpoint: Callable[[int], None] | None = None,
) -> tuple[Any, Any, Any]:
    tokenizer = architecture.build_tokenizer(cfg.work_dir / "tokenizer")
    text_encoder = architecture.text_encoder(tokenizer, cfg.text_hidden, cfg.text_layers)
    unet = architecture.unet(cfg.text_hidden, cfg.unet_channels)
    if cfg.init_from is not None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(cfg.init_from / "text_encoder").state_dict())
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(cfg.init_from / "unet").state_dict())
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    sched = architecture.train_scheduler()
    acp = sched.alphas_cumprod
    ckpt = cfg.work_dir / "diffusion.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        for name, module in (("unet", unet), ("text", text_encoder), ("ema_unet", ema_unet), ("ema_text", ema_text)):
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        _log(cfg.work_dir, {"stage": "resume", "step": step, "t": time.time()})
    ds = ShapesDataset(cfg.seed)
    tokens = _Tokens(tokenizer)
    task = progress.add_task("unet+text", total=cfg.steps, completed=step, info="")
    unet.train()
    text_encoder.train()
    while step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=g)
        captions = [
            caption_for(ds.spec(int(i)), np.random.default_rng([cfg.seed, int(i), 1 + step])) for i in idx
        ]
        z0 = latents[idx] * scale
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=g)
        a = acp[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        zt = a * z0 + s * noise
        target = a * noise - s * z0  # v-prediction
        hidden = text_encoder(tokens(captions))[0]
        pred = unet(zt, t, hidden).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(pl, 1 - decay)
        progress.update(task, completed=step, info=f"loss {loss.item():.4f} lr {lr:.1e}")
        if step % 25 == 0:
            _log(cfg.work_dir, {"stage": "diffusion", "step": step, "loss": loss.item(), "t": time.time()})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_atomic(
                {
                    "unet": unet.state_dict(), "text": text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                    "opt": opt.state_dict(), "step": step,
                },
                ckpt,
            )
            if on_checkpoint is not None:
                on_checkpoint(step)
    return tokenizer, ema_text.eval(), ema_unet.eval()


def export(cfg: TinyTrainConfig, vae: Any, scale: float, tokenizer: Any, text_encoder: Any, unet: Any,
           out_dir: Path | None = None) -> Path:
    """Save a standard diffusers folder that StableDiffusionPipeline.from_pretrained loads."""
    out = out_dir or cfg.out_dir
    vae.register_to_config(scaling_factor=scale)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=architecture.sample_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "philip_train.json").write_text(json.dumps(cfg.to_json(), indent=2))
    (out / "prompt_vocabulary.json").write_text(json.dumps(prompt_vocabulary(), indent=2))
    return out


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def export_checkpoint(cfg: TinyTrainConfig, out_dir: Path) -> Path:
    """Export the EMA weights of the latest diffusion checkpoint (for mid-run evaluation)."""
    vae = architecture.vae()
    vae.load_state_dict(torch.load(cfg.work_dir / "vae.pt", weights_only=True)["model"])
    scale = torch.load(cfg.work_dir / "latents.pt", weights_only=True)["scale"]
    tokenizer = architecture.build_tokenizer(cfg.work_dir / "tokenizer")
    text = architecture.text_encoder(tokenizer, cfg.text_hidden, cfg.text_layers)
    unet = architecture.unet(cfg.text_hidden, cfg.unet_channels)
    state = torch.load(cfg.work_dir / "diffusion.pt", weights_only=True)
    text.load_state_dict(state["ema_text"])
    unet.load_state_dict(state["ema_unet"])
    return export(cfg, vae, scale, tokenizer, text, unet, out_dir)


def train_tiny(cfg: TinyTrainConfig) -> dict[str, Any]:
    """Run (or resume) every stage and export; returns timings in seconds."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    (cfg.work_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    torch.manual_seed(cfg.seed)
    timings: dict[str, Any] = {}
    with _threads(cfg.threads), _progress() as progress:
        t0 = time.time()
        vae = train_vae(cfg, progress)
        timings["vae_s"] = time.time() - t0
        t1 = time.time()
        latents, scale = encode_pool(cfg, vae, progress)
        timings["pool_s"] = time.time() - t1
        t2 = time.time()
        tokenizer, text, unet = train_diffusion(cfg, vae, latents, scale, progress)
        timings["diffusion_s"] = time.time() - t2
        export(cfg, vae, scale, tokenizer, text, unet)
    timings["total_s"] = time.time() - t0
    _log(cfg.work_dir, {"stage": "done", **timings})
    return timings
