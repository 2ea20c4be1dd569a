"""FABRIC conditioning on a tiny random-weight SD pipeline: numerics, wiring, compute accounting."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import AutoencoderTiny
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

from philip.models.pipelines import load_pipeline, make_scheduler
from philip.tiny.train import TinyTrainConfig, train_tiny
from services.refiner.fabric import FabricAttnProcessor, FabricConditioner, FeedbackWeights, encode_images

torch.set_num_threads(1)  # a training job shares this machine

PROMPTS = ["red circle", "blue square"]
STEPS = 3


@pytest.fixture(scope="session")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("fabric-tiny")
    train_tiny(TinyTrainConfig(
        out_dir=tmp / "out", work_dir=tmp / "work", vae_steps=2, vae_batch=4, pool_size=32, steps=2, batch=4,
        unet_channels=(32, 32, 32), text_hidden=32, text_layers=1, threads=1,
    ))
    return load_pipeline(tmp / "out")


@pytest.fixture
def refs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {"liked": torch.randn(2, 4, 16, 16, generator=g), "disliked": torch.randn(1, 4, 16, 16, generator=g)}


def generate(pipe: Any, guidance: float = 5.0, steps: int = STEPS) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                output_type="latent").images


@pytest.fixture
def unet_batches(pipe: Any) -> Iterator[list[int]]:
    """Batch sizes of every UNet call; registered before a conditioner's hook, so see the note in the test."""
    sizes: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args, kw: sizes.append(args[0].shape[0]), with_kwargs=True)
    yield sizes
    handle.remove()


def attn1(pipe: Any) -> Any:
    return pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1


# ---- weights ------------------------------------------------------------------------------------

def test_weight_schedule_edges() -> None:
    w = FeedbackWeights(start=0.25, end=0.5, min_weight=0.1, max_weight=0.8, neg_scale=0.5)
    assert w.weight_at(0.25) == (0.8, 0.4)
    assert w.weight_at(0.5) == (0.8, 0.4)
    assert w.weight_at(0.2499) == pytest.approx((0.1, 0.05))
    assert w.weight_at(0.5001) == pytest.approx((0.1, 0.05))
    assert all(FeedbackWeights().weight_at(p) == (0.8, 0.4) for p in (0.0, 0.5, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": -0.1}, r"start must be in \[0.0, 1.0\]"),
        ({"end": 1.5}, r"end must be in \[0.0, 1.0\]"),
        ({"start": 0.6, "end": 0.4}, r"start \(0.6\) must be <= end \(0.4\)"),
        ({"min_weight": -1.0}, r"min_weight must be in \[0.0, inf\)"),
        ({"max_weight": math.nan}, r"max_weight must be in"),
        ({"neg_scale": math.inf}, r"neg_scale must be in"),
    ],
)
def test_weight_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeedbackWeights(**kwargs)


def test_weight_at_rejects_progress_outside_schedule() -> None:
    with pytest.raises(ValueError, match=r"progress must be in \[0.0, 1.0\]"):
        FeedbackWeights().weight_at(1.2)


# ---- processor numerics -------------------------------------------------------------------------

def test_off_mode_is_the_default_processor_bit_for_bit(pipe: Any) -> None:
    attn = attn1(pipe)
    x = torch.randn(3, 256, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(FabricAttnProcessor()(attn, x), AttnProcessor2_0()(attn, x))
        assert torch.equal(FabricAttnProcessor(AttnProcessor())(attn, x), AttnProcessor()(attn, x))
        recording = FabricAttnProcessor()
        recording.mode = "record"
        assert torch.equal(recording(attn, x), AttnProcessor2_0()(attn, x))
        assert recording.recorded is not None and torch.equal(recording.recorded, x)


def _explicit(attn: Any, x: torch.Tensor, refs: torch.Tensor, w: float) -> torch.Tensor:
    """Textbook FABRIC: softmax over own + reference keys, reference probabilities * w, renormalised."""
    b, n, _ = x.shape
    ctx = torch.cat([x, refs.reshape(1, -1, refs.shape[-1]).expand(b, -1, -1)], dim=1)
    h = attn.heads
    q, k, v = (t.view(b, t.shape[1], h, -1).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)))
    p = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    p = torch.cat([p[..., :n], p[..., n:] * w], dim=-1)
    p = p / p.sum(-1, keepdim=True)
    out = (p @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[0](out)


def test_inject_weights_reference_probabilities_and_splits_cfg_halves(pipe: Any) -> None:
    attn = attn1(pipe)
    g = torch.Generator().manual_seed(1)
    width = attn.to_q.in_features
    x = torch.randn(4, 256, width, generator=g)  # [uncond x2, cond x2]
    recorded = torch.randn(3, 256, width, generator=g)  # 2 liked, 1 disliked
    proc = FabricAttnProcessor()
    proc.recorded = recorded
    proc.inject(n_liked=2, n_disliked=1, pos_weight=0.8, neg_weight=0.3, split_cfg=True)
    with torch.no_grad():
        got = proc(attn, x)
        torch.testing.assert_close(got[:2], _explicit(attn, x[:2], recorded[2:], 0.3), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[2:], _explicit(attn, x[2:], recorded[:2], 0.8), atol=1e-5, rtol=1e-4)
        proc.inject(n_liked=2, n_disliked=0, pos_weight=0.8, neg_weight=0.0, split_cfg=False)
        torch.testing.assert_close(proc(attn, x), _explicit(attn, x, recorded[:2], 0.8), atol=1e-5, rtol=1e-4)


# ---- the conditioner on a real pipeline ---------------------------------------------------------

def test_zero_references_reproduce_the_unconditioned_output(pipe: Any) -> None:
    base = generate(pipe)
    with FabricConditioner(pipe) as fab:
        assert torch.equal(generate(pipe), base)
    assert fab.reference_calls == 0
    assert fab.unet_image_evals == STEPS * 2 * len(PROMPTS)


def test_likes_change_the_output_and_zero_weight_does_not(pipe: Any, refs: dict[str, torch.Tensor]) -> None:
    base = generate(pipe)
    with FabricConditioner(pipe, liked=refs["liked"]):
        liked = generate(pipe)
    zero = FeedbackWeights(min_weight=0.0, max_weight=0.0)
    with FabricConditioner(pipe, liked=refs["liked"], weights=zero) as fab:
        assert torch.equal(generate(pipe), base)  # weight 0 masks references out entirely
    assert fab.reference_calls == 0
    assert (liked - base).abs().max() > 1e-3


def test_one_batched_reference_pass_per_step(
    pipe: Any, refs: dict[str, torch.Tensor], unet_batches: list[int]
) -> None:
    with FabricConditioner(pipe, liked=refs["liked"], disliked=refs["disliked"]) as fab:
        generate(pipe)
    # The counting hook runs before the conditioner's, so each step logs main (4), then reference (2 + 1).
    assert unet_batches == [2 * len(PROMPTS), 3] * STEPS
    assert (fab.main_calls, fab.reference_calls) == (STEPS, STEPS)
    assert fab.unet_image_evals == STEPS * (2 * len(PROMPTS) + 3)


def test_processors_and_hooks_restored(pipe: Any, refs: dict[str, torch.Tensor]) -> None:
    base = generate(pipe)
    before = pipe.unet.attn_processors
    hooks = len(pipe.unet._forward_pre_hooks)
    with FabricConditioner(pipe, liked=refs["liked"]):
        during = pipe.unet.attn_processors
        for name, proc in during.items():
            if name.endswith("attn1.processor"):
                assert isinstance(proc, FabricAttnProcessor) and proc.base is before[name]
            else:
                assert proc is before[name]
    after = pipe.unet.attn_processors
    assert all(after[name] is proc for name, proc in before.items())
    assert len(pipe.unet._forward_pre_hooks) == hooks
    assert torch.equal(generate(pipe), base)


def test_without_cfg_dislikes_do_nothing(pipe: Any, refs: dict[str, torch.Tensor]) -> None:
    base = generate(pipe, guidance=1.0)
    with FabricConditioner(pipe, disliked=refs["disliked"]) as fab:
        assert torch.equal(generate(pipe, guidance=1.0), base)
    assert fab.reference_calls == 0
    with FabricConditioner(pipe, liked=refs["liked"], disliked=refs["disliked"]) as fab:
        assert (generate(pipe, guidance=1.0) - base).abs().max() > 1e-3
    assert fab.unet_image_evals == STEPS * (len(PROMPTS) + 2)  # likes only in the reference pass


def _first_prediction(pipe: Any, **kwargs: Any) -> torch.Tensor:
    """The first main UNet output, [uncond half, cond half]."""
    outputs: list[torch.Tensor] = []
    with FabricConditioner(pipe, **kwargs) as fab:
        handle = pipe.unet.register_forward_hook(
            lambda m, args, out: outputs.append(out[0]) if not fab._in_reference else None
        )
        try:
            generate(pipe, steps=1)
        finally:
            handle.remove()
    return outputs[0]


def test_dislikes_act_on_the_uncond_half_and_likes_on_the_cond_half(
    pipe: Any, refs: dict[str, torch.Tensor]
) -> None:
    n = len(PROMPTS)
    none = _first_prediction(pipe)
    disliked = _first_prediction(pipe, disliked=refs["disliked"])
    liked = _first_prediction(pipe, liked=refs["liked"])
    # The untouched half runs the same attention on a half batch: equal up to kernel rounding.
    torch.testing.assert_close(disliked[n:], none[n:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(liked[:n], none[:n], atol=1e-5, rtol=1e-5)
    assert (disliked[:n] - none[:n]).abs().max() > 1e-3
    assert (liked[n:] - none[n:]).abs().max() > 1e-3


def test_weights_follow_the_timestep_schedule(pipe: Any, refs: dict[str, torch.Tensor]) -> None:
    weights = FeedbackWeights(start=0.0, end=0.5, min_weight=0.2, max_weight=0.6)
    seen: list[float] = []
    with FabricConditioner(pipe, liked=refs["liked"], weights=weights) as fab:
        proc = next(iter(fab.processors.values()))
        # Registered after the conditioner's hook: sees the weights it set for this step.
        handle = pipe.unet.register_forward_pre_hook(
            lambda m, a, kw: seen.append(proc.pos_weight) if not fab._in_reference else None, with_kwargs=True
        )
        try:
            generate(pipe, steps=4)
        finally:
            handle.remove()
        assert [fab.progress(t) for t in pipe.scheduler.timesteps] == [0.0, 0.25, 0.5, 0.75]
    assert seen == [0.6, 0.6, 0.6, 0.2]


@pytest.mark.parametrize("scheduler", ["dpm++", "euler"])
def test_references_are_noised_to_the_current_timestep(
    pipe: Any, refs: dict[str, torch.Tensor], scheduler: str
) -> None:
    """The reference input is sqrt(abar) z0 + sqrt(1 - abar) eps after the scheduler's input scaling."""
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(pipe, scheduler)
    try:
        with FabricConditioner(pipe, liked=refs["liked"], seed=7) as fab:
            handle = pipe.unet.register_forward_pre_hook(
                lambda m, a, kw: inputs.append((a[0], a[1])) if fab._in_reference else None, with_kwargs=True
            )
            try:
                generate(pipe)
            finally:
                handle.remove()
        abar = pipe.scheduler.alphas_cumprod
    finally:
        pipe.scheduler = original
    noise = torch.Generator().manual_seed(7)
    assert len(inputs) == STEPS
    for z_t, t in inputs:
        eps = torch.randn(refs["liked"].shape, generator=noise)
        a = abar[int(t)]
        torch.testing.assert_close(z_t, a.sqrt() * refs["liked"] + (1 - a).sqrt() * eps, atol=1e-4, rtol=1e-4)


def test_rejects_latents_of_the_wrong_shape(pipe: Any) -> None:
    with pytest.raises(ValueError, match=r"liked must be latents of shape \(N, 4, h, w\)"):
        FabricConditioner(pipe, liked=torch.zeros(1, 3, 16, 16))
    assert not any(isinstance(p, FabricAttnProcessor) for p in pipe.unet.attn_processors.values())


# ---- encoding references ------------------------------------------------------------------------

def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 40, 220))]


def test_encode_images_uses_the_posterior_mean(pipe: Any) -> None:
    latents = encode_images(pipe, _images())
    pixels = pipe.image_processor.preprocess(_images(), height=64, width=64)
    with torch.no_grad():
        expected = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    assert latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(latents, expected)


def test_encode_images_handles_autoencoder_tiny(pipe: Any) -> None:
    tiny: Any = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), scaling_factor=0.5,
    )
    stub = SimpleNamespace(vae=tiny, unet=pipe.unet, vae_scale_factor=4, image_processor=pipe.image_processor)
    latents = encode_images(stub, _images())
    with torch.no_grad():
        expected = tiny.encode(pipe.image_processor.preprocess(_images(), height=64, width=64)).latents * 0.5
    assert latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(latents, expected)
