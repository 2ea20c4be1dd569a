"""Which self-attention (``attn1``) layers take FABRIC's references (``PHILIP_FABRIC_LAYERS``).

A reference pass keeps every chosen layer's input tokens for each reference until the main pass has attended to
them, so the choice sets FABRIC's activation memory (and the extra keys each main-pass layer attends over). The
layers not chosen run plain attention and store nothing.

* ``all``: every ``attn1`` (the paper's FABRIC; 16 on SD-1.5, 70 on SDXL).
* ``up``: the decoder half only; ``mid+up`` adds the bottleneck; ``down+mid`` is the encoder half and bottleneck,
  whose reference pass stops after the bottleneck (:func:`pass_end`: the up blocks would record nothing).
* ``""``: the served family's default (:data:`FAMILY_LAYERS`).

Per reference, fp16, from the UNet configs' layer shapes (``philip bench fabric-layers`` recomputes them on the
``meta`` device): SD-1.5 at 512 px all 22.0 MiB; SDXL at 1024 px all 200 MiB, up 105, mid+up 130, down+mid 95.
A step's FLOPs over a plain one's (SDXL, 4 images with CFG, 2 + 2 references): all 1.76, up 1.64, mid+up 1.66,
down+mid 1.32 (its reference pass is 41 % of a UNet pass).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from philip.models.families import family_of

ATTN1 = "attn1.processor"
# Each choice's UNet parts, named as the first component of a processor's module path.
CHOICES: dict[str, tuple[str, ...]] = {
    "all": ("down_blocks", "mid_block", "up_blocks"),
    "up": ("up_blocks",),
    "mid+up": ("mid_block", "up_blocks"),
    "down+mid": ("down_blocks", "mid_block"),
}
# The family's default when PHILIP_FABRIC_LAYERS is empty. SD-1.x keeps every layer: it is the paper's setting and
# philip-tiny's rounds stay bit for bit what they were. SDXL takes the up blocks: 36 of its 70 attn1 layers and 105
# of the 200 MiB per reference at 1024 px, and the decoder is where a UNet renders appearance (InstantStyle finds
# SDXL's style in up_blocks.0's attention, its layout in down_blocks.2's); layout is what steered seeds already
# inherit from the likes. Its FLOPs are all's less the injection into the encoder half (1.64 vs 1.76 a plain
# step's): the whole reference pass still runs. down+mid is cheaper in both (95 MiB, 1.32: its pass stops before
# the up blocks) but conditions no decoder layer, so it is the choice for a deployment that trades likeness for
# latency. What either does to quality on a real SDXL checkpoint is unmeasured (random-weight folders only,
# models/README.md): a quality eval on a real checkpoint should settle the default.
FAMILY_LAYERS: dict[str, str] = {"sd": "all", "sdxl": "up"}


def resolve_layers(choice: str, pipe: Any) -> str:
    """``choice`` checked, or the family default of ``pipe`` for ``""``; ValueError for an unknown choice."""
    if not choice:
        return FAMILY_LAYERS.get(family_of(pipe).name, "all")
    if choice not in CHOICES:
        raise ValueError(f"FABRIC layers must be empty (the family's default) or one of {', '.join(CHOICES)}, "
                         f"got {choice!r}")
    return choice


def chosen_layers(processor_names: Iterable[str], choice: str) -> list[str]:
    """The ``attn1`` processor names (``unet.attn_processors`` keys) in ``choice``'s parts of the UNet."""
    parts = CHOICES[choice]
    return [name for name in processor_names if name.endswith(ATTN1) and name.split(".", 1)[0] in parts]


def pass_end(chosen: list[str], choice: str) -> str | None:
    """The chosen layer a reference pass must reach last, when ``choice`` leaves out the up blocks (which run last
    in a UNet): nothing after it records, so the pass may stop there. None when the up blocks record."""
    if "up_blocks" in CHOICES[choice] or not chosen:
        return None
    parts = ("down_blocks", "mid_block")  # in the order a UNet runs them; within one, indices run in order
    return max(chosen, key=lambda name: (parts.index(name.split(".")[0]),
                                         tuple(int(p) for p in name.split(".") if p.isdigit())))
