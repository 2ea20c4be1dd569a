"""FABRIC's cost on real UNets without their weights: each config's UNet built on the ``meta`` device (shapes only,
no memory, about a second), one reference pass through the refiner's own recording processor, and per layer
choice what a reference stores and what injecting it adds to a step.

* ``mib_per_reference``: bytes of the recorded ``attn1`` inputs of one reference, fp16;
* ``unet_tflop``: one image through the UNet (torch's FLOP counter on the meta forward);
* ``reference_pass_tflop``: one reference's pass, which stops after the last recording layer when the up blocks
  record nothing (``down+mid``);
* ``inject_tflop``: what the main pass's extra keys and values add per step for ``images`` images with CFG and
  ``liked`` + ``disliked`` references: per chosen layer of T tokens and C channels, 4 T (n T) C per image row
  (scores and weighted sum over n T more keys) plus 4 n T C^2 (projecting the references' keys and values);
* ``flop_ratio``: a FABRIC step over a plain one, 2 x ``images`` UNet passes + the reference passes +
  ``inject_tflop`` over 2 x ``images`` UNet passes: FLOPs only, not a timing.
"""

from __future__ import annotations

from typing import Any

import torch

# Shape values of stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (2,567,463,684 parameters built
# from them, as published) and of SD-1.5's (859,520,964); everything else is diffusers' defaults.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "layers_per_block": 2, "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816}
SD15_UNET: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}


def meta_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config).to(torch.float16)


def _meta(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device="meta", dtype=torch.float16)


def _forward(unet: Any, batch: int, size_px: int) -> None:
    """One forward on meta tensors: SDXL's added conditions when the config asks for them."""
    cfg, latent = unet.config, size_px // 8
    added = None
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": _meta(batch, pooled), "time_ids": _meta(batch, 6)}
    with torch.no_grad():
        unet(_meta(batch, cfg.in_channels, latent, latent), torch.full((batch,), 500, device="meta"),
             encoder_hidden_states=_meta(batch, 77, cfg.cross_attention_dim), added_cond_kwargs=added,
             return_dict=False)


def reference_pass(unet: Any, size_px: int, choice: str) -> tuple[dict[str, tuple[int, int]], float]:
    """One reference through the refiner's own recording processors for ``choice`` (stopping where the conditioner
    stops it): per chosen ``attn1`` the (tokens, channels) it keeps, and the pass's TFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    from services.refiner.fabric_attention import FabricAttnProcessor, ReferencesRecorded
    from services.refiner.fabric_layers import chosen_layers, pass_end

    original = dict(unet.attn_processors)
    recorders = {name: FabricAttnProcessor(original[name]) for name in chosen_layers(original, choice)}
    for proc in recorders.values():
        proc.mode = "record"
    last = pass_end(list(recorders), choice)
    if last is not None:
        recorders[last].ends_pass = True
    unet.set_attn_processor({name: recorders.get(name, proc) for name, proc in original.items()})
    try:
        with FlopCounterMode(display=False) as counter:
            _forward(unet, 1, size_px)
    except ReferencesRecorded:
        pass
    finally:
        unet.set_attn_processor(original)
    shapes = {}
    for name, proc in recorders.items():
        assert proc.recorded is not None
        shapes[name] = (int(proc.recorded.shape[1]), int(proc.recorded.shape[2]))
    return shapes, counter.get_total_flops() / 1e12


def choice_costs(shapes: dict[str, tuple[int, int]], reference_tf: float, unet_tf: float, images: int, liked: int,
                 disliked: int) -> dict[str, Any]:
    """What ``shapes`` (one choice's recorded layers) store and add to a step whose reference pass costs
    ``reference_tf`` per reference and whose UNet costs ``unet_tf`` per image."""
    refs = liked + disliked
    stored = sum(t * c * 2 for t, c in shapes.values())  # fp16
    inject = sum(4 * t * c * (images * t + c) * refs for t, c in shapes.values()) / 1e12
    plain = 2 * images * unet_tf  # CFG doubles the batch
    return {"layers": len(shapes), "mib_per_reference": round(stored / 2**20, 2),
            "reference_pass_tflop": round(reference_tf, 3), "inject_tflop": round(inject, 3),
            "flop_ratio": round((plain + refs * reference_tf + inject) / plain, 3)}


def real_unet_report(images: int = 4, liked: int = 2, disliked: int = 2) -> dict[str, Any]:
    """SDXL base at 1024 px and SD-1.5 at 512 px: every layer choice's stored bytes and FLOPs, from meta UNets."""
    from services.refiner.fabric_layers import CHOICES

    report: dict[str, Any] = {}
    for label, config, size in (("sdxl_1024", SDXL_UNET, 1024), ("sd15_512", SD15_UNET, 512)):
        unet = meta_unet(config)
        passes = {c: reference_pass(unet, size, c) for c in CHOICES}
        unet_tf = passes["all"][1]  # every layer records: the whole UNet runs
        report[label] = {
            "unet_params": sum(p.numel() for p in unet.parameters()), "unet_tflop": round(unet_tf, 3),
            "choices": {c: choice_costs(shapes, tf, unet_tf, images, liked, disliked)
                        for c, (shapes, tf) in passes.items()}}
    return report
