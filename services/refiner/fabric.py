"""FABRIC feedback conditioning (arXiv 2307.10159) as diffusers extension points.

Liked and disliked images steer generation through the UNet's self-attention: at every
denoising step the references, noised to the current timestep, go through the UNet once (one
batched pass for all of them) while each ``attn1`` layer records its input tokens; the main
pass then lets the images attend to those tokens as extra keys and values. Nothing of the
pipeline is copied: a :class:`FabricAttnProcessor` is installed on every ``attn1`` with
``unet.set_attn_processor`` and a UNet forward pre-hook runs the reference pass, so the
unmodified ``StableDiffusionPipeline.__call__`` does the rest::

    liked = encode_images(pipe, liked_pil)        # clean latents, already scaled
    disliked = encode_images(pipe, disliked_pil)
    empty = pipe.encode_prompt("", pipe.device, 1, False)[0]
    with FabricConditioner(pipe, liked=liked, disliked=disliked, weights=FeedbackWeights(),
                           empty_prompt_embeds=empty) as fab:
        images = pipe(prompts, num_inference_steps=20, guidance_scale=5).images
    print(fab.unet_image_evals)  # main + reference images evaluated, for compute comparisons

Likes act through the conditional half of the classifier-free-guidance batch and dislikes
through the unconditional half, which CFG pushes away from. Without CFG (guidance <= 1, or
guidance-distilled models such as SD-Turbo/LCM that never double the batch) the whole batch
gets the likes and dislikes do nothing; they are then left out of the reference pass.
Supports SD-1.x-style UNets (no ``added_cond_kwargs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from philip.feedback_weights import FeedbackWeights
from philip.models.pipelines import native_size

Mode = Literal["off", "record", "inject"]
_ATTN1 = "attn1.processor"


class FabricAttnProcessor:
    """Self-attention processor with FABRIC's record/inject modes.

    * ``off``: the wrapped processor (by default ``AttnProcessor2_0``), bit for bit.
    * ``record``: as ``off``, and keeps this layer's input tokens of the reference batch.
    * ``inject``: the images' queries attend to their own tokens plus the recorded reference
      tokens (all references of a kind flattened along the sequence axis, shared by every
      image); reference probabilities are scaled by a weight and renormalised, i.e. ``log w``
      is added to those logits. With CFG the first half of the batch (unconditional) gets the
      disliked tokens and the second (conditional) the liked ones; without, all get the liked.
      The first ``exempt`` images (of each half) attend to themselves only.
    """

    def __init__(self, base: Any | None = None) -> None:
        self.base: Any = base if base is not None else AttnProcessor2_0()
        self.mode: Mode = "off"
        self.recorded: torch.Tensor | None = None
        self.n_liked = 0
        self.n_disliked = 0
        self.pos_weight = 0.0
        self.neg_weight = 0.0
        self.split_cfg = False
        self.exempt = 0

    def inject(self, n_liked: int, n_disliked: int, pos_weight: float, neg_weight: float, split_cfg: bool,
               exempt: int = 0) -> None:
        """Switch to ``inject``: the first ``n_liked`` recorded rows are likes, the next ``n_disliked`` dislikes."""
        if self.recorded is None or self.recorded.shape[0] < n_liked + n_disliked:
            raise RuntimeError("inject needs a reference pass recorded first")
        self.mode = "inject"
        self.n_liked, self.n_disliked = n_liked, n_disliked
        self.pos_weight, self.neg_weight = pos_weight, neg_weight
        self.split_cfg = split_cfg
        self.exempt = exempt

    def reset(self) -> None:
        """Back to ``off`` and drop the recorded tokens."""
        self.mode = "off"
        self.recorded = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.mode == "record":
            self.recorded = hidden_states.detach()
        if self.mode != "inject":
            extra = dict(kwargs) if temb is None else {**kwargs, "temb": temb}
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, **extra)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise NotImplementedError("FABRIC injection supports plain self-attention on (batch, tokens, channels)")
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("FABRIC injection does not support spatial/group-normed attention")
        return self._inject(attn, hidden_states)

    def _inject(self, attn: Any, x: torch.Tensor) -> torch.Tensor:
        assert self.recorded is not None  # checked in inject()
        channels = self.recorded.shape[-1]
        refs = self.recorded.to(dtype=x.dtype)
        liked = refs[: self.n_liked].reshape(1, -1, channels)
        disliked = refs[self.n_liked : self.n_liked + self.n_disliked].reshape(1, -1, channels)
        if self.split_cfg:
            half = x.shape[0] // 2
            out = torch.cat(
                [_attend(attn, x[:half], disliked, self.neg_weight, self.exempt),
                 _attend(attn, x[half:], liked, self.pos_weight, self.exempt)]
            )
        else:
            out = _attend(attn, x, liked, self.pos_weight, self.exempt)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor


def _attend(attn: Any, x: torch.Tensor, refs: torch.Tensor, weight: float, exempt: int = 0) -> torch.Tensor:
    """Multi-head attention of ``x``'s tokens over themselves plus ``refs`` (1, M, C) weighted by ``weight``;
    the first ``exempt`` images do not see ``refs``."""
    batch, own = x.shape[:2]
    query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    bias = None
    if refs.shape[1] > 0:
        # Project the shared references once, then broadcast over the images.
        key = torch.cat([key, attn.to_k(refs).expand(batch, -1, -1)], dim=1)
        value = torch.cat([value, attn.to_v(refs).expand(batch, -1, -1)], dim=1)
        bias = torch.zeros(1 if not exempt else batch, 1, 1, key.shape[1], dtype=query.dtype, device=query.device)
        bias[..., own:] = math.log(weight) if weight > 0 else -math.inf  # p_ref *= w, renormalised
        bias[:exempt, ..., own:] = -math.inf
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


class FabricConditioner:
    """Installs FABRIC on a pipeline's UNet until :meth:`remove` (or the end of a ``with``).

    ``liked``/``disliked`` are clean latents (N x C x h x w, scaled by the VAE's scaling factor,
    see :func:`encode_images`). ``seed`` seeds the noise added to the references each step.
    """

    def __init__(
        self,
        pipe: Any,
        liked: torch.Tensor | None = None,
        disliked: torch.Tensor | None = None,
        weights: FeedbackWeights | None = None,
        empty_prompt_embeds: torch.Tensor | None = None,
        seed: int = 0,
        exempt: int = 0,
    ) -> None:
        self.pipe = pipe
        self.exempt = exempt  # the first images of the batch (explored captions) are not conditioned
        self.unet: Any = pipe.unet
        channels = int(self.unet.config.in_channels)
        self.liked = _references("liked", liked, channels)
        self.disliked = _references("disliked", disliked, channels)
        if len(self.liked) and len(self.disliked) and self.liked.shape[1:] != self.disliked.shape[1:]:
            raise ValueError(f"liked {tuple(self.liked.shape[1:])} and disliked {tuple(self.disliked.shape[1:])} "
                             "latents must have the same shape")
        self.weights = weights if weights is not None else FeedbackWeights()
        self.empty_prompt_embeds = empty_prompt_embeds
        self._noise = torch.Generator().manual_seed(seed)
        self.unet_image_evals = 0  # images through the UNet: main batches + reference batches
        self.main_calls = 0
        self.reference_calls = 0
        self._in_reference = False  # the hook must ignore the reference call it makes itself

        self._original: dict[str, Any] = dict(self.unet.attn_processors)
        self.processors: dict[str, FabricAttnProcessor] = {
            name: FabricAttnProcessor(proc) for name, proc in self._original.items() if name.endswith(_ATTN1)
        }
        if not self.processors:
            raise ValueError("the UNet has no self-attention (attn1) layers to condition")
        # set_attn_processor pops from the dict it gets, hence the fresh one.
        self.unet.set_attn_processor({name: self.processors.get(name, proc) for name, proc in self._original.items()})
        self._hook: Any = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)

    def remove(self) -> None:
        """Restore the original processors and remove the hook (idempotent)."""
        if self._hook is None:
            return
        self._hook.remove()
        self._hook = None
        self.unet.set_attn_processor(dict(self._original))
        for proc in self.processors.values():
            proc.reset()

    def __enter__(self) -> FabricConditioner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def progress(self, timestep: torch.Tensor | float) -> float:
        """Fraction of the schedule done before ``timestep`` (its index in ``scheduler.timesteps`` / their count)."""
        timesteps = self.pipe.scheduler.timesteps
        t = torch.as_tensor(timestep).reshape(-1)[0].to(device=timesteps.device, dtype=timesteps.dtype)
        # Exact match first (duplicated timesteps of 2nd-order schedulers take the first); nearest otherwise.
        hits = (timesteps == t).nonzero()
        index = int(hits[0]) if len(hits) else int((timesteps.float() - t.float()).abs().argmin())
        return index / len(timesteps)

    def _before_unet(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._in_reference:
            return
        sample: torch.Tensor = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.main_calls += 1
        self.unet_image_evals += sample.shape[0]
        # The pipeline doubles the batch as [uncond, cond] exactly when this property is true.
        split_cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) and sample.shape[0] % 2 == 0
        pos_w, neg_w = self.weights.weight_at(self.progress(timestep))
        # A reference with weight 0 is masked out entirely, so it need not be computed.
        n_liked = len(self.liked) if pos_w > 0 else 0
        n_disliked = len(self.disliked) if split_cfg and neg_w > 0 else 0
        if n_liked + n_disliked == 0:
            for proc in self.processors.values():
                proc.mode = "off"
            return
        self._record(self.liked[:n_liked], self.disliked[:n_disliked], sample, timestep, kwargs)
        for proc in self.processors.values():
            proc.inject(n_liked, n_disliked, pos_w, neg_w, split_cfg, self.exempt)

    def _record(
        self, liked: torch.Tensor, disliked: torch.Tensor, sample: torch.Tensor, timestep: Any, kwargs: dict[str, Any]
    ) -> None:
        """One batched UNet pass over all references, noised to ``timestep``, recording attn1 inputs."""
        if kwargs.get("added_cond_kwargs"):
            raise NotImplementedError("FABRIC conditioning supports SD-1.x-style UNets (no added_cond_kwargs)")
        z0 = torch.cat([r for r in (liked, disliked) if len(r)]).to(device=sample.device, dtype=sample.dtype)
        n = z0.shape[0]
        eps = torch.randn(z0.shape, generator=self._noise).to(device=sample.device, dtype=sample.dtype)
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)[:1].expand(n)
        scheduler = self.pipe.scheduler
        z_t = scheduler.add_noise(z0, eps, t)
        if hasattr(scheduler, "scale_model_input"):
            # Same input scaling as the main batch got (sigma-parameterised schedulers divide by sqrt(sigma^2+1)).
            z_t = scheduler.scale_model_input(z_t, timestep)
        empty = self._empty_embeds(sample.device).to(dtype=sample.dtype).expand(n, -1, -1)
        timestep_cond = kwargs.get("timestep_cond")
        if timestep_cond is not None:
            timestep_cond = timestep_cond[:1].expand(n, -1)
        for proc in self.processors.values():
            proc.mode = "record"
        self._in_reference = True
        try:
            with torch.no_grad():
                self.unet(
                    z_t, timestep, encoder_hidden_states=empty, timestep_cond=timestep_cond,
                    cross_attention_kwargs=kwargs.get("cross_attention_kwargs"), return_dict=False,
                )
        finally:
            self._in_reference = False
        self.reference_calls += 1
        self.unet_image_evals += n

    def _empty_embeds(self, device: torch.device) -> torch.Tensor:
        if self.empty_prompt_embeds is None:
            with torch.no_grad():
                self.empty_prompt_embeds = self.pipe.encode_prompt("", device, 1, False)[0]
        assert self.empty_prompt_embeds is not None
        return self.empty_prompt_embeds.to(device)


def _references(name: str, latents: torch.Tensor | None, channels: int) -> torch.Tensor:
    if latents is None or latents.numel() == 0:
        return torch.zeros(0, channels, 1, 1)
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"{name} must be latents of shape (N, {channels}, h, w), got {tuple(latents.shape)}")
    return latents.detach()


def encode_images(
    pipe: Any, images: Sequence[Image.Image], height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """Clean latents of ``images`` resized to the pipeline's size, scaled by ``vae.config.scaling_factor``.

    Uses the posterior mean for ``AutoencoderKL`` and ``.latents`` for ``AutoencoderTiny``
    (which has no distribution).
    """
    size = native_size(pipe)
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(list(images), height=height or size, width=width or size)
    with torch.no_grad():
        out = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype))
    dist = getattr(out, "latent_dist", None)
    latents = dist.mean if dist is not None else out.latents
    return latents * vae.config.scaling_factor
