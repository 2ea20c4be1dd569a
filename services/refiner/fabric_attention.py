"""FABRIC's self-attention processor: each chosen ``attn1`` layer records its input tokens in a reference
pass, and in the main pass lets the images attend to those tokens as extra keys and values, each reference
weighted per image (the likes on the conditional half of the CFG batch, the dislikes on the unconditional
half). :class:`~services.refiner.fabric.FabricConditioner` installs it and runs the reference pass."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

Mode = Literal["off", "record", "inject"]


class ReferencesRecorded(Exception):
    """Raised in a reference pass by the last layer that records, when what the UNet computes after it records
    nothing (choices without the up blocks): the pass stops there, its output was never used."""


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
        # Per main-batch row (or one row for all) and recorded reference: the log-weight its attention adds to
        # that reference's tokens, -inf where the row may not see it (another request's, or an exempt row).
        self.pos_bias: torch.Tensor | None = None  # conditional half (or the whole batch without CFG): likes
        self.neg_bias: torch.Tensor | None = None  # unconditional half: dislikes
        self.split_cfg = False
        self.exempt = 0
        self.pos_weight = self.neg_weight = 0.0  # the last single-request weights, for introspection
        self.ends_pass = False  # the last layer a reference pass must reach: recording here stops that pass

    def inject(self, n_liked: int, n_disliked: int, pos_weight: float, neg_weight: float, split_cfg: bool,
               exempt: int = 0) -> None:
        """Switch to ``inject`` for one request: the first ``n_liked`` recorded rows are likes, the next
        ``n_disliked`` dislikes, shared by every image but the first ``exempt`` (of each half)."""
        n = n_liked + n_disliked
        if self.recorded is None or self.recorded.shape[0] < n:
            raise RuntimeError("inject needs a reference pass recorded first")
        pos = torch.full((1, n), -math.inf)
        neg = torch.full((1, n), -math.inf)
        pos[:, :n_liked] = log_weight(pos_weight)
        neg[:, n_liked:] = log_weight(neg_weight)
        self.pos_weight, self.neg_weight = pos_weight, neg_weight
        self.inject_rows(pos, neg, split_cfg, exempt)

    def inject_rows(self, pos_bias: torch.Tensor, neg_bias: torch.Tensor, split_cfg: bool, exempt: int = 0) -> None:
        """Switch to ``inject`` with per-row reference biases (rows x recorded references; one row = every row)."""
        if self.recorded is None or self.recorded.shape[0] < pos_bias.shape[1]:
            raise RuntimeError("inject needs a reference pass recorded first")
        self.mode = "inject"
        self.pos_bias, self.neg_bias = pos_bias, neg_bias
        self.split_cfg = split_cfg
        self.exempt = exempt

    def reset(self) -> None:
        """Back to ``off`` and drop the recorded tokens."""
        self.mode = "off"
        self.recorded = None
        self.pos_bias = self.neg_bias = None

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
            if self.ends_pass:
                raise ReferencesRecorded
        if self.mode != "inject":
            extra = dict(kwargs) if temb is None else {**kwargs, "temb": temb}
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, **extra)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise NotImplementedError("FABRIC injection supports plain self-attention on (batch, tokens, channels)")
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("FABRIC injection does not support spatial/group-normed attention")
        return self._inject(attn, hidden_states)

    def _inject(self, attn: Any, x: torch.Tensor) -> torch.Tensor:
        assert self.recorded is not None and self.pos_bias is not None and self.neg_bias is not None
        refs = self.recorded.to(dtype=x.dtype)
        if self.split_cfg:
            half = x.shape[0] // 2
            out = torch.cat([_attend(attn, x[:half], refs, self.neg_bias, self.exempt),
                             _attend(attn, x[half:], refs, self.pos_bias, self.exempt)])
        else:
            out = _attend(attn, x, refs, self.pos_bias, self.exempt)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor


def log_weight(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf  # p_ref *= w, renormalised


def _attend(attn: Any, x: torch.Tensor, refs: torch.Tensor, ref_bias: torch.Tensor, exempt: int = 0) -> torch.Tensor:
    """Multi-head attention of ``x``'s tokens over themselves plus the recorded ``refs`` (R, T, C), reference r
    weighted for row i by ``exp(ref_bias[i, r])`` (one row of ``ref_bias``: the same for all); the first ``exempt``
    rows do not see any reference. References no row may see are left out of the keys."""
    batch, own = x.shape[:2]
    query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    ref_bias = ref_bias.to(device=x.device, dtype=query.dtype)
    if exempt:
        ref_bias = ref_bias.expand(batch, -1).clone()
        ref_bias[:exempt] = -math.inf
    seen = torch.isfinite(ref_bias).any(dim=0)
    bias = None
    if bool(seen.any()):
        ref_bias, used = ref_bias[:, seen], refs[: len(seen)][seen.to(refs.device)]
        tokens = used.reshape(1, -1, used.shape[-1])
        # Project the references once, then broadcast over the images.
        key = torch.cat([key, attn.to_k(tokens).expand(batch, -1, -1)], dim=1)
        value = torch.cat([value, attn.to_v(tokens).expand(batch, -1, -1)], dim=1)
        per_token = ref_bias.repeat_interleave(used.shape[1], dim=1)
        own_bias = torch.zeros(per_token.shape[0], own, dtype=query.dtype, device=query.device)
        bias = torch.cat([own_bias, per_token], dim=1)[:, None, None, :]
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


__all__ = ["FabricAttnProcessor", "Mode", "ReferencesRecorded", "log_weight"]
