"""A feedback round's values: what a round is asked (:class:`RoundParams`, the :class:`Feedback` of earlier rounds'
:class:`FeedbackImage` s), what it returns (a :class:`FeedbackRound` of :class:`RoundImage` s and its
:class:`RoundCompute`), how each image's initial noise was drawn (:class:`NoiseOrigin`), and the callbacks a round
reports through. :mod:`services.refiner.rounds` runs rounds on them (and re-exports them for its callers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from philip.exploration import RoundChoice, SlotBelief, SlotConstraints
from philip.feedback_weights import FeedbackWeights
from philip.rpc.errors import InvalidArgument
from services.refiner.seeds import steer_noise

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes int64
StepCallback = Callable[[int, int], None]  # (steps done, steps in all)
PreviewCallback = Callable[[int, list[Image.Image]], None]  # (steps done, one preview per image)


@dataclass(frozen=True)
class NoiseOrigin:
    """How an image's initial noise was drawn, enough to redraw it bit for bit.

    ``seed`` draws the root noise (:func:`~services.refiner.seeds.initial_noise`, what the
    pipeline draws for that seed); each ``(seed, diversity)`` of ``steps`` then steers it toward
    fresh noise from a generator seeded with that seed (``steer_noise(..., n=1)``).
    """

    seed: int
    steps: tuple[tuple[int, float], ...] = ()

    @property
    def last_seed(self) -> int:
        """The seed this image's own round drew its fresh noise (and scheduler noise) from."""
        return self.steps[-1][0] if self.steps else self.seed

    def steered(self, seed: int, diversity: float) -> NoiseOrigin:
        return NoiseOrigin(self.seed, (*self.steps, (seed, diversity)))

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """The initial noise, shape ``(1, C, h, w)``, unscaled (as ``pipe(latents=...)`` takes it)."""
        return self.draw(shape)[0]

    def draw(self, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Generator]:
        """The noise and the generator that drew the last fresh part, advanced past that draw.

        The pipeline takes that generator for its scheduler noise, so an unsteered image matches a
        plain ``pipe(generator=Generator().manual_seed(seed))`` call even with ancestral samplers.
        """
        shape = (1, *tuple(shape)[-3:])
        generator = torch.Generator().manual_seed(self.seed)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        for seed, diversity in self.steps:
            generator = torch.Generator().manual_seed(seed)
            noise = steer_noise([noise], 1, diversity, generator=generator)
        return noise, generator


@dataclass(frozen=True)
class FeedbackImage:
    """An image a person liked or disliked in an earlier round; ``image_id`` keys the latent cache."""

    image_id: str
    image: Image.Image
    origin: NoiseOrigin
    reference: bool = False  # an uploaded image: conditions attention only, has no noise to steer from


@dataclass(frozen=True)
class Feedback:
    """Everything liked and disliked so far for this prompt (all rounds), oldest first."""

    liked: tuple[FeedbackImage, ...] = ()
    disliked: tuple[FeedbackImage, ...] = ()
    weights: FeedbackWeights = field(default_factory=FeedbackWeights)
    diversity: float = 0.5
    # Share of the images drawn from captions prompt exploration asks for, from the session's history.
    explore: float = 0.0
    history: tuple[RoundChoice, ...] = ()
    constraints: SlotConstraints = field(default_factory=SlotConstraints)  # the person's pins and bans

    def __post_init__(self) -> None:
        for name in ("diversity", "explore"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # also rejects NaN
                raise InvalidArgument(f"{name} must be in [0, 1], got {value}", field=name)


@dataclass(frozen=True)
class RoundParams:
    """One round's batch: ``num_images`` images of ``prompt``; image i draws fresh noise from ``seed + i``."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    num_images: int
    seed: int
    negative_prompt: str = ""
    adapter_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoundImage:
    image: Image.Image
    index: int
    origin: NoiseOrigin
    steered_from: str | None = None  # image_id of the liked image whose noise this one started near
    prompt: str = ""  # the prompt it was drawn from: the round's, or an explored caption

    @property
    def seed(self) -> int:
        return self.origin.last_seed


@dataclass(frozen=True)
class RoundCompute:
    """UNet work of a round in image evaluations (one image through the UNet once)."""

    steps: int  # denoising steps run (fewer than asked when cancelled)
    main_image_evals: int  # the batch, CFG-doubled when guidance > 1
    reference_image_evals: int  # FABRIC's reference passes: liked + disliked per active step

    @property
    def total_image_evals(self) -> int:
        return self.main_image_evals + self.reference_image_evals


@dataclass(frozen=True)
class FeedbackRound:
    images: tuple[RoundImage, ...]
    compute: RoundCompute
    learned: tuple[SlotBelief, ...] = ()  # what exploration believed when it asked for this round's prompts
