"""Generation requests: what a client asked for, validated and resolved into what the engine runs.

``GenerationParams`` mirrors the wire message (zeros and None mean "use the default");
``RequestResolver.resolve`` turns it into a ``GenerationRequest`` with every default filled in,
the style applied and the seed chosen, or raises ``InvalidArgument`` naming the field and the
allowed range. Nothing here knows about protobuf or torch.
"""

from __future__ import annotations

import math
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from philip.logs import get_logger
from philip.models.adapters import adapter_exists, is_adapter_id
from philip.models.families import GenerationDefaults
from philip.rpc.errors import FailedPrecondition, InvalidArgument, NotFound

log = get_logger("philip.generation.requests")

MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 1000
MAX_ADAPTERS = 4
DEFAULT_NUM_IMAGES = 4
# SD-1.x's defaults (philip-tiny's); a served model's own come with it (RequestResolver.defaults).
DEFAULT_STEPS = GenerationDefaults().steps
DEFAULT_GUIDANCE = GenerationDefaults().guidance
DEFAULT_SCHEDULER = GenerationDefaults().scheduler
PREVIEW_MODES = ("linear", "vae")
# Aspect presets (width units, height units); the long side becomes the model's native size.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "square": (1, 1),
    "landscape_4_3": (4, 3),
    "portrait_3_4": (3, 4),
    "wide_16_9": (16, 9),
    "tall_9_16": (9, 16),
}


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """The client's parameters as sent (see GenerationParams in common.proto)."""

    prompt: str
    negative_prompt: str = ""
    num_images: int = 0
    width: int = 0
    height: int = 0
    aspect_ratio: str = "square"
    steps: int = 0
    guidance: float | None = None
    scheduler: str = ""
    seed: int | None = None
    preview_every: int = 0
    style: str = ""
    adapter_ids: tuple[str, ...] = ()
    preview_mode: str = "linear"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated batch request; image ``i`` is reproducible from (prompts, params, ``seed + i``)."""

    prompt: str  # style already applied
    negative_prompt: str
    num_images: int
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    seed: int
    preview_every: int
    preview_mode: str
    adapter_ids: tuple[str, ...] = ()
    aspect_ratio: str = "square"

    @property
    def image_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


@dataclass(frozen=True, slots=True)
class Style:
    """A named prompt preset: ``"<prefix> <prompt>, <suffix>"`` plus a negative prompt."""

    prefix: str = ""
    suffix: str = ""
    negative: str = ""

    def apply(self, prompt: str, negative_prompt: str) -> tuple[str, str]:
        styled = " ".join(part for part in (self.prefix.strip(), prompt.strip()) if part)
        if self.suffix.strip():
            styled = f"{styled}, {self.suffix.strip()}"
        negatives = ", ".join(part for part in (negative_prompt.strip(), self.negative.strip()) if part)
        return styled, negatives


def load_styles(path: str | Path) -> dict[str, Style]:
    """Read style presets from a TOML file of ``[name]`` tables; a missing file means no styles."""
    path = Path(path)
    if not path.is_file():
        log.warning("styles.missing", path=str(path))
        return {}
    with path.open("rb") as f:
        raw = tomllib.load(f)
    styles: dict[str, Style] = {}
    for name, table in raw.items():
        if not isinstance(table, dict) or not set(table) <= {"prefix", "suffix", "negative"}:
            raise ValueError(f"{path}: style {name!r} must be a table with prefix/suffix/negative strings")
        if not all(isinstance(value, str) for value in table.values()):
            raise ValueError(f"{path}: style {name!r} values must be strings")
        styles[name] = Style(**table)
    return styles


def _int_in(name: str, value: int, low: int, high: int, default: int | None = None) -> int:
    if value == 0 and default is not None:
        return default
    if not low <= value <= high:
        hint = f" (0 = default {default})" if default is not None else ""
        raise InvalidArgument(f"{name} must be in {low}-{high}{hint}; got {value}", field=name)
    return value


def _size(name: str, value: int, max_size: int) -> int:
    if value % 8 or not 8 <= value <= max_size:
        raise InvalidArgument(f"{name} must be a multiple of 8 in 8-{max_size} (this model's max_size; 0 for the "
                              f"preset); got {value}", field=name)
    return value


def preset_size(aspect_ratio: str, native_size: int) -> tuple[int, int]:
    """(width, height) for an aspect preset: long side = native size, both rounded to a multiple of 8."""
    w_units, h_units = ASPECT_RATIOS[aspect_ratio]
    long_units = max(w_units, h_units)

    def side(units: int) -> int:
        return max(8, math.floor(native_size * units / long_units / 8 + 0.5) * 8)

    return side(w_units), side(h_units)


@dataclass(frozen=True, slots=True)
class RequestResolver:
    """Validates ``GenerationParams`` against the served model and fills in defaults."""

    native_size: int  # the model's defaults, else unet.config.sample_size * vae scale factor
    schedulers: tuple[str, ...]
    styles: Mapping[str, Style] = field(default_factory=dict)
    adapters_dir: str | None = None  # None: this server loads no adapters
    # steps (and their range), guidance, scheduler, max_size (each side's cap)
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    def __post_init__(self) -> None:
        if self.defaults.scheduler not in self.schedulers:  # at start-up, not on the first request
            raise ValueError(f"the model's default scheduler {self.defaults.scheduler!r} is not one of "
                             f"{', '.join(self.schedulers)}")

    def resolve(self, params: GenerationParams) -> GenerationRequest:
        if not params.prompt.strip():
            raise InvalidArgument(f"prompt is required (1-{MAX_PROMPT_CHARS} characters)", field="prompt")
        prompt, negative = params.prompt, params.negative_prompt
        if params.style:
            style = self.styles.get(params.style)
            if style is None:
                known = ", ".join(sorted(self.styles)) or "none configured"
                raise InvalidArgument(f"unknown style {params.style!r}; known styles: {known}", field="style")
            prompt, negative = style.apply(prompt, negative)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"prompt must be 1-{MAX_PROMPT_CHARS} characters after the style is applied; got {len(prompt)}",
                field="prompt",
            )
        if len(negative) > MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"negative_prompt must be at most {MAX_PROMPT_CHARS} characters after the style is applied; "
                f"got {len(negative)}",
                field="negative_prompt",
            )
        width, height = self._resolve_size(params)
        defaults = self.defaults
        guidance = defaults.guidance if params.guidance is None else params.guidance
        if not (math.isfinite(guidance) and 0.0 <= guidance <= 30.0):
            raise InvalidArgument(f"guidance must be in 0-30 (absent = default {defaults.guidance}); got {guidance}",
                                  field="guidance")
        scheduler = params.scheduler or defaults.scheduler
        if scheduler not in self.schedulers:
            raise InvalidArgument(f"scheduler must be one of {', '.join(self.schedulers)}; got {scheduler!r}",
                                  field="scheduler")
        if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
            raise InvalidArgument(f"seed must be in 0-{MAX_SEED} (absent = random); got {params.seed}", field="seed")
        if params.preview_mode not in PREVIEW_MODES:
            raise InvalidArgument(f"preview_mode must be one of {', '.join(PREVIEW_MODES)}", field="preview_mode")
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            num_images=_int_in("num_images", params.num_images, 1, 8, DEFAULT_NUM_IMAGES),
            width=width,
            height=height,
            steps=_int_in("steps", params.steps, defaults.min_steps, defaults.max_steps, defaults.steps),
            guidance=float(guidance),
            scheduler=scheduler,
            seed=secrets.randbelow(MAX_SEED + 1) if params.seed is None else params.seed,
            preview_every=check_preview_every(params.preview_every),
            preview_mode=params.preview_mode,
            adapter_ids=self._resolve_adapters(params.adapter_ids),
            aspect_ratio=params.aspect_ratio,
        )

    def _resolve_size(self, params: GenerationParams) -> tuple[int, int]:
        if params.aspect_ratio not in ASPECT_RATIOS:
            raise InvalidArgument(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}", field="aspect_ratio")
        if params.width == 0 and params.height == 0:
            return preset_size(params.aspect_ratio, self.native_size)
        for name, value in (("width", params.width), ("height", params.height)):
            if value == 0:
                raise InvalidArgument(f"{name} must be set when the other side is (multiple of 8 in "
                                      f"8-{self.defaults.max_size}), or leave both 0 for the aspect preset", field=name)
        max_size = self.defaults.max_size
        return _size("width", params.width, max_size), _size("height", params.height, max_size)

    def _resolve_adapters(self, adapter_ids: tuple[str, ...]) -> tuple[str, ...]:
        if len(adapter_ids) > MAX_ADAPTERS:
            raise InvalidArgument(f"adapter_ids takes 0-{MAX_ADAPTERS} ids; got {len(adapter_ids)}",
                                  field="adapter_ids")
        for adapter_id in adapter_ids:
            if not is_adapter_id(adapter_id):
                raise InvalidArgument(f"adapter_ids: {adapter_id!r} is not an adapter id (ad_ followed by hex "
                                      "digits, as CreateAdapter returns)", field="adapter_ids")
            if self.adapters_dir is None:
                raise FailedPrecondition("this server is not configured for adapters (PHILIP_ADAPTERS_DIR)",
                                         field="adapter_ids")
            if not adapter_exists(self.adapters_dir, adapter_id):
                raise NotFound(f"unknown adapter id {adapter_id} in adapter_ids; ListAdapters shows the ones "
                               "that exist", field="adapter_ids")
        return tuple(sorted(set(adapter_ids)))


def check_preview_every(value: int) -> int:
    """Steps between previews, 0-100 (0 = none); used at submit and for mid-stream changes."""
    return _int_in("preview_every", value, 0, 100)
