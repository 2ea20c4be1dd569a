"""FABRIC feedback conditioning (arXiv 2307.10159) as diffusers extension points.

Liked and disliked images steer generation through the UNet's self-attention: at every
denoising step the references, noised to the current timestep, go through the UNet once (one
batched pass for all of them) while each ``attn1`` layer records its input tokens; the main
pass then lets the images attend to those tokens as extra keys and values. Nothing of the
pipeline is copied: a :class:`FabricAttnProcessor` is installed on every ``attn1`` with
``unet.set_attn_processor`` and a UNet forward pre-hook runs the reference pass, so the
unmodified pipeline ``__call__`` (SD-1.x's or SDXL's) does the rest::

    liked = encode_images(pipe, liked_pil)        # clean latents, already scaled
    disliked = encode_images(pipe, disliked_pil)
    with FabricConditioner(pipe, liked=liked, disliked=disliked, weights=FeedbackWeights(),
                           empty_prompt_embeds=unconditional(pipe)) as fab:
        images = pipe(prompts, num_inference_steps=20, guidance_scale=5).images
    print(fab.unet_image_evals)  # main + reference images evaluated, for compute comparisons

Likes act through the conditional half of the classifier-free-guidance batch and dislikes
through the unconditional half, which CFG pushes away from. Without CFG (guidance <= 1, or
guidance-distilled models such as SD-Turbo/LCM that never double the batch) the whole batch
gets the likes and dislikes do nothing; they are then left out of the reference pass.

The reference pass is conditioned on no prompt (:func:`~philip.models.conditioning.unconditional`); an SDXL UNet
also gets that pooled embedding and the main call's time ids (``added_cond_kwargs``). Only the ``attn1`` layers
``layers`` chooses take references (:mod:`services.refiner.fabric_layers`: every one of SD-1.x's 16, SDXL's up
blocks, 36 of 70, by default); the others run plain attention and store nothing. When the up blocks take none,
the reference pass stops after the last layer that records (:class:`ReferencesRecorded`); it still counts as
whole image evaluations in :attr:`FabricConditioner.unet_image_evals`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from PIL import Image

from philip.feedback_weights import FeedbackWeights
from philip.models.conditioning import PromptEmbeds, reference_added_cond, unconditional
from philip.models.latents import encode_pixels
from philip.models.pipelines import native_size
from services.refiner.fabric_attention import FabricAttnProcessor, ReferencesRecorded, log_weight
from services.refiner.fabric_layers import chosen_layers, pass_end, resolve_layers


@dataclass
class ReferenceGroup:
    """One request's part of a batch shared with others: its ``images`` (rows of each CFG half, in batch order),
    its references, its weight schedule and the seed of its reference noise; its first ``exempt`` images are not
    conditioned. Each image attends only to its own request's references (the others' keys are masked)."""

    images: int
    liked: torch.Tensor | None = None
    disliked: torch.Tensor | None = None
    weights: FeedbackWeights = field(default_factory=FeedbackWeights)
    seed: int = 0
    exempt: int = 0
    reference_evals: int = 0  # reference images through the UNet, counted by the conditioner


class FabricConditioner:
    """Installs FABRIC on a pipeline's UNet until :meth:`remove` (or the end of a ``with``).

    ``liked``/``disliked`` are clean latents (N x C x h x w, scaled by the VAE's scaling factor,
    see :func:`encode_images`). ``seed`` seeds the noise added to the references each step. A batch
    of several requests passes ``groups`` instead (one :class:`ReferenceGroup` each, in batch order):
    one reference pass per step serves them all.
    """

    def __init__(
        self,
        pipe: Any,
        liked: torch.Tensor | None = None,
        disliked: torch.Tensor | None = None,
        weights: FeedbackWeights | None = None,
        empty_prompt_embeds: PromptEmbeds | torch.Tensor | None = None,
        seed: int = 0,
        exempt: int = 0,
        groups: Sequence[ReferenceGroup] | None = None,
        layers: str = "",
    ) -> None:
        self.pipe = pipe
        self.unet: Any = pipe.unet
        channels = int(self.unet.config.in_channels)
        self.single = groups is None  # one request: the batch is all its images
        self.groups = list(groups) if groups is not None else [
            ReferenceGroup(0, liked, disliked, weights if weights is not None else FeedbackWeights(), seed, exempt)]
        self._refs: list[tuple[torch.Tensor, torch.Tensor]] = []
        shapes = set()
        for group in self.groups:
            pair = (_references("liked", group.liked, channels), _references("disliked", group.disliked, channels))
            shapes |= {tuple(r.shape[1:]) for r in pair if len(r)}
            self._refs.append(pair)
        if len(shapes) > 1:
            raise ValueError(f"liked and disliked latents must have the same shape, got {sorted(shapes)}")
        self.liked, self.disliked = self._refs[0]
        self.weights = self.groups[0].weights
        self.exempt = exempt  # the first images of the batch (explored captions) are not conditioned
        # No prompt's embeddings (a bare tensor: SD-1.x's, without a pooled one); encoded on first use if None.
        self.empty_prompt = (PromptEmbeds(empty_prompt_embeds) if isinstance(empty_prompt_embeds, torch.Tensor)
                             else empty_prompt_embeds)
        self._noise = [torch.Generator().manual_seed(g.seed) for g in self.groups]
        self.unet_image_evals = 0  # images through the UNet: main batches + reference batches
        self.main_calls = 0
        self.reference_calls = 0
        self._in_reference = False  # the hook must ignore the reference call it makes itself

        self._original: dict[str, Any] = dict(self.unet.attn_processors)
        self.layers = resolve_layers(layers, pipe)  # "" = the family's choice
        # Layers left out keep their own processor: they neither record (the memory saving) nor inject.
        self.processors: dict[str, FabricAttnProcessor] = {
            name: FabricAttnProcessor(self._original[name]) for name in chosen_layers(self._original, self.layers)
        }
        if not self.processors:
            raise ValueError(f"the UNet has no self-attention (attn1) layers to condition in {self.layers!r}")
        last = pass_end(list(self.processors), self.layers)
        if last is not None:
            self.processors[last].ends_pass = True
        # set_attn_processor pops from the dict it gets, hence the fresh one.
        self.unet.set_attn_processor({name: self.processors.get(name, proc) for name, proc in self._original.items()})
        self._hook: Any = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)

    @property
    def stored_bytes(self) -> int:
        """Bytes of reference activations held now (the last reference pass's, every recorded reference)."""
        return sum(p.recorded.numel() * p.recorded.element_size() for p in self.processors.values()
                   if p.recorded is not None)

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
        progress = self.progress(timestep)
        counts = []  # per group: (liked, disliked, liked weight, disliked weight) this step
        for group, (liked, disliked) in zip(self.groups, self._refs, strict=True):
            pos_w, neg_w = group.weights.weight_at(progress)
            # A reference with weight 0 is masked out entirely, so it need not be computed.
            counts.append((len(liked) if pos_w > 0 else 0, len(disliked) if split_cfg and neg_w > 0 else 0,
                           pos_w, neg_w))
        if sum(n + m for n, m, _, _ in counts) == 0:
            for proc in self.processors.values():
                proc.mode = "off"
            return
        self._record(counts, sample, timestep, kwargs)
        if self.single:
            n_liked, n_disliked, pos_w, neg_w = counts[0]
            for proc in self.processors.values():
                proc.inject(n_liked, n_disliked, pos_w, neg_w, split_cfg, self.exempt)
            return
        pos, neg = self._row_biases(counts)
        for proc in self.processors.values():
            proc.inject_rows(pos, neg, split_cfg)

    def _row_biases(self, counts: list[tuple[int, int, float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image row and recorded reference: the log-weight where the row's own request liked (pos) or disliked
        (neg) it, -inf elsewhere and for exempt rows."""
        rows, refs = sum(g.images for g in self.groups), sum(n + m for n, m, _, _ in counts)
        pos = torch.full((rows, refs), -math.inf)
        neg = torch.full((rows, refs), -math.inf)
        row = col = 0
        for group, (n, m, pos_w, neg_w) in zip(self.groups, counts, strict=True):
            conditioned = slice(row + group.exempt, row + group.images)
            pos[conditioned, col:col + n] = log_weight(pos_w)
            neg[conditioned, col + n:col + n + m] = log_weight(neg_w)
            row, col = row + group.images, col + n + m
        return pos, neg

    def _record(self, counts: list[tuple[int, int, float, float]], sample: torch.Tensor, timestep: Any,
                kwargs: dict[str, Any]) -> None:
        """One batched UNet pass over every group's references, noised to ``timestep`` (each group's noise from its
        own generator, as it would draw alone), recording attn1 inputs."""
        parts, noise = [], []
        for group, (liked, disliked), generator, (n, m, _, _) in zip(self.groups, self._refs, self._noise, counts,
                                                                    strict=True):
            z0 = [r for r in (liked[:n], disliked[:m]) if len(r)]
            if not z0:
                continue
            part = torch.cat(z0).to(device=sample.device, dtype=sample.dtype)
            parts.append(part)
            noise.append(torch.randn(part.shape, generator=generator).to(device=sample.device, dtype=sample.dtype))
            group.reference_evals += n + m
        z0_all, eps = torch.cat(parts), torch.cat(noise)
        n_all = z0_all.shape[0]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)[:1].expand(n_all)
        scheduler = self.pipe.scheduler
        z_t = scheduler.add_noise(z0_all, eps, t)
        if hasattr(scheduler, "scale_model_input"):
            # Same input scaling as the main batch got (sigma-parameterised schedulers divide by sqrt(sigma^2+1)).
            z_t = scheduler.scale_model_input(z_t, timestep)
        uncond = self._unconditional()
        empty = uncond.embeds.to(device=sample.device, dtype=sample.dtype).expand(n_all, -1, -1)
        added = reference_added_cond(kwargs.get("added_cond_kwargs"), uncond, n_all, sample)
        timestep_cond = kwargs.get("timestep_cond")
        if timestep_cond is not None:
            timestep_cond = timestep_cond[:1].expand(n_all, -1)
        for proc in self.processors.values():
            proc.mode = "record"
        self._in_reference = True
        try:
            with torch.no_grad():
                self.unet(
                    z_t, timestep, encoder_hidden_states=empty, timestep_cond=timestep_cond,
                    cross_attention_kwargs=kwargs.get("cross_attention_kwargs"), added_cond_kwargs=added,
                    return_dict=False,
                )
        except ReferencesRecorded:
            pass  # no up-block layer records: the pass stopped after the last one that does (its output is unused)
        finally:
            self._in_reference = False
        self.reference_calls += 1
        self.unet_image_evals += n_all

    def _unconditional(self) -> PromptEmbeds:
        if self.empty_prompt is None:
            with torch.no_grad():
                self.empty_prompt = unconditional(self.pipe)
        return self.empty_prompt


def _references(name: str, latents: torch.Tensor | None, channels: int) -> torch.Tensor:
    if latents is None or latents.numel() == 0:
        return torch.zeros(0, channels, 1, 1)
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"{name} must be latents of shape (N, {channels}, h, w), got {tuple(latents.shape)}")
    return latents.detach()


def encode_images(
    pipe: Any, images: Sequence[Image.Image], height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """Clean UNet latents of ``images`` resized to the pipeline's size (``encode_pixels``: the posterior mean,
    scaled by ``vae.config.scaling_factor``)."""
    size = native_size(pipe)
    pixels = pipe.image_processor.preprocess(list(images), height=height or size, width=width or size)
    with torch.no_grad():
        return encode_pixels(pipe, pixels)


__all__ = ["FabricAttnProcessor", "FabricConditioner", "FeedbackWeights", "ReferenceGroup", "ReferencesRecorded",
           "encode_images"]
