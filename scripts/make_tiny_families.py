"""Build tiny random-weight diffusers folders, one per model family, in seconds (tests and CPU checks).

    .venv/bin/python scripts/make_tiny_families.py OUT_DIR [--family sd1 --family sdxl]

writes ``OUT_DIR/tiny-sd1`` (``StableDiffusionPipeline``: one CLIP text encoder), ``OUT_DIR/tiny-sdxl``
(``StableDiffusionXLPipeline``: a ``text_time`` UNet, ``CLIPTextModel`` + ``CLIPTextModelWithProjection``, a
VAE with ``force_upcast``, ``EulerDiscreteScheduler``), ``OUT_DIR/tiny-sd3`` (``StableDiffusion3Pipeline``: an
``SD3Transformer2DModel``, two ``CLIPTextModelWithProjection`` + a ``T5EncoderModel``, a 16-channel VAE with a
``shift_factor``, ``FlowMatchEulerDiscreteScheduler``) and ``OUT_DIR/tiny-flux`` (``FluxPipeline``: a
``FluxTransformer2DModel`` on 2x2-packed latents without guidance embedding (schnell-like), ``CLIPTextModel`` +
T5, the same kind of VAE and scheduler), each saved with ``save_pretrained`` so they load exactly as a downloaded
checkpoint would. Every CLIP tokenizer is philip-tiny's (``models/philip-tiny/tokenizer``); the T5 slots get a
small word-level tokenizer built here from philip-tiny's prompt vocabulary: nothing is downloaded.

RANDOM WEIGHTS: these folders prove shapes and wiring only (what each family feeds its UNet, what the loader
picks, that previews, FABRIC and the services run end to end). Their images are noise. Never use them for
demos, benchmarks of quality or any claim about what a family generates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models" / "philip-tiny" / "tokenizer"
VOCABULARY = REPO / "models" / "philip-tiny" / "prompt_vocabulary.json"
# Every folder's text encoders read philip-tiny's tokenizer: its vocabulary, length and special ids.
_TOKENS = {"vocab_size": 576, "max_position_embeddings": 24, "bos_token_id": 574, "eos_token_id": 575,
           "pad_token_id": 575}
_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
_UNET = {  # 64 px at the VAE's 4x: two levels, attention on the lower one, as small as the configs allow
    "sample_size": 16, "block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
}


def _text_config(hidden: int, projection: int) -> CLIPTextConfig:
    # Two layers: SDXL reads the penultimate hidden state.
    return CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, projection_dim=projection, hidden_act="quick_gelu", **_TOKENS)


def _vae(force_upcast: bool, scaling_factor: float, latent_channels: int = 4,
         shift_factor: float | None = None) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=latent_channels,
                         norm_num_groups=4, layers_per_block=1, sample_size=64, force_upcast=force_upcast,
                         scaling_factor=scaling_factor, shift_factor=shift_factor)


def build_sd1() -> StableDiffusionPipeline:
    """SD-1.x's shape: one CLIP encoder whose last hidden state is the UNet's cross-attention context."""
    unet = UNet2DConditionModel(cross_attention_dim=32, **_UNET)
    scheduler = DPMSolverMultistepScheduler(**_SCHEDULE, algorithm_type="dpmsolver++")
    # force_upcast off (SDXL's is on): the tests see both a half-precision VAE kept as loaded and one kept fp32.
    return StableDiffusionPipeline(vae=_vae(False, 0.18215), text_encoder=CLIPTextModel(_text_config(32, 32)),
                                   tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER)), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_sdxl() -> StableDiffusionXLPipeline:
    """SDXL's shape: two encoders concatenated as context (16 + 32), encoder 2's pooled projection plus six
    time ids (original size, crop, target size) as the UNet's added condition."""
    time_dim, projection = 8, 16
    unet = UNet2DConditionModel(cross_attention_dim=48, addition_embed_type="text_time", use_linear_projection=True,
                                addition_time_embed_dim=time_dim,
                                projection_class_embeddings_input_dim=projection + 6 * time_dim, **_UNET)
    scheduler = EulerDiscreteScheduler(**_SCHEDULE, timestep_spacing="leading")
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    return StableDiffusionXLPipeline(
        vae=_vae(True, 0.13025), text_encoder=CLIPTextModel(_text_config(16, 16)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(32, projection)), tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False)


def t5_tokenizer() -> T5TokenizerFast:
    """A word-level T5 tokenizer (a Unigram of whole words, as T5's own class builds it; single letters for any
    other word): T5's special ids (pad 0, eos 1, unk 2), philip-tiny's prompt words, nothing downloaded."""
    slots = json.loads(VOCABULARY.read_text())
    words = sorted({w for values in slots["slots"].values() for v in values for w in v.split()}
                   | set(slots["template"].replace("{", " ").replace("}", " ").split()) | {"a", "an", "of", "the"})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -1.0) for w in words] + [(c, -5.0) for c in string.ascii_letters + string.digits]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5(tokenizer: T5TokenizerFast, d_model: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=8,
                                   num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def build_sd3() -> StableDiffusion3Pipeline:
    """SD3's shape: CLIP-L (16) and CLIP-G (32) penultimate states concatenated and padded to T5's width (48),
    T5's tokens after them, both projections pooled (16 + 32); a joint-attention transformer on 16-channel
    latents, patch 2; a flow-matching scheduler with SD3's shift."""
    tokenizer, t5_tokens = CLIPTokenizer.from_pretrained(str(TOKENIZER)), t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                        caption_projection_dim=32, pooled_projection_dim=48, pos_embed_max_size=32)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(False, 1.5305, latent_channels=16, shift_factor=0.0609),
        text_encoder=CLIPTextModelWithProjection(_text_config(16, 16)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(32, 32)), tokenizer_2=tokenizer,
        text_encoder_3=_t5(t5_tokens, 48), tokenizer_3=t5_tokens)


def build_flux() -> FluxPipeline:
    """Flux's shape: CLIP's pooled output (32) and T5's tokens (48); a transformer on 2x2 patches of 16-channel
    latents packed into 64-channel tokens, no guidance embedding (schnell-like), rotary axes summing to its head
    width; a flow-matching scheduler without dynamic shifting."""
    t5_tokens = t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                         pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=_vae(False, 0.3611, latent_channels=16, shift_factor=0.1159),
        text_encoder=CLIPTextModel(_text_config(32, 32)), tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER)),
        text_encoder_2=_t5(t5_tokens, 48), tokenizer_2=t5_tokens)


BUILDERS: dict[str, Callable[[], Any]] = {"sd1": build_sd1, "sdxl": build_sdxl, "sd3": build_sd3,
                                          "flux": build_flux}


def make_family(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """``out_dir/tiny-<family>``, rebuilt from scratch with weights drawn from ``seed`` (same seed, same bytes)."""
    folder = Path(out_dir) / f"tiny-{family}"
    if folder.exists():
        shutil.rmtree(folder)
    torch.manual_seed(seed)
    BUILDERS[family]().save_pretrained(str(folder), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):  # philip-tiny's own files, not transformers' re-serialisation
        if (folder / name).is_dir() and _is_clip(folder / name):  # Flux's tokenizer_2 is T5's
            shutil.rmtree(folder / name)
            shutil.copytree(TOKENIZER, folder / name)
    return folder


def _is_clip(tokenizer_dir: Path) -> bool:
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    return "CLIP" in str(config.get("tokenizer_class", ""))


def make_tiny_families(out_dir: str | Path, families: tuple[str, ...] = tuple(BUILDERS)) -> dict[str, Path]:
    """Every family's tiny folder under ``out_dir``: ``{family: folder}``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {family: make_family(family, out_dir) for family in families}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", action="append", choices=tuple(BUILDERS),
                        help="a family to build (repeatable); default: all")
    args = parser.parse_args(argv)
    for family, folder in make_tiny_families(args.out_dir, tuple(args.family or BUILDERS)).items():
        print(f"{family}: {folder}")


if __name__ == "__main__":
    main()
