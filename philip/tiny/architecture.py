"""philip-tiny's components as standard diffusers/transformers objects.

Design choices (measured, see models/README.md):
- zero terminal SNR + v-prediction: with SD's schedule the last timestep leaks the mean
  colour of the latent, so the model learns to read the background colour from the noise
  instead of the prompt; rescaling the betas removes that leak.
- ``addition_embed_type="text"``: an attention-pooled text embedding is added to the time
  embedding, so every ResNet block sees the colours, not only the cross-attention layers.
- a word-level CLIP BPE vocabulary built from the caption words (no hub files); any other
  word still tokenizes into byte-level characters, and new tokens can be added.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from philip.tiny.dataset import VOCABULARY

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 24  # BOS + words + EOS; the longest caption uses 9


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokenizer_files(words: tuple[str, ...] = VOCABULARY) -> tuple[dict[str, int], list[str]]:
    """A CLIP-format byte-level BPE vocabulary whose merges assemble each caption word."""
    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for tok in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in sorted(set(words)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def build_tokenizer(out_dir: Path) -> CLIPTokenizer:
    """Write vocab.json + merges.txt and load them as a CLIPTokenizer."""
    vocab, merges = tokenizer_files()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"), model_max_length=MAX_TOKENS
    )
    for word in VOCABULARY:
        ids = tok(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits caption word {word!r} into {ids}")
    return tok


def text_encoder(tokenizer: CLIPTokenizer, hidden: int = 128, layers: int = 3) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        projection_dim=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def vae() -> AutoencoderKL:
    """64x64 RGB <-> 16x16x4 latents (two downsamplings)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def unet(cross_attention_dim: int = 128, channels: tuple[int, int, int] = (64, 128, 128)) -> UNet2DConditionModel:
    """Transformer blocks (self- and cross-attention) at 16x16 and 8x8, plain ResNets at 4x4."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=32,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    steps_offset=1,
)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def sample_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(**SCHEDULER_CONFIG, algorithm_type="dpmsolver++", final_sigmas_type="zero")
