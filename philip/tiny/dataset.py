"""Procedural captioned shapes: the data philip-tiny is trained and judged on.

Everything is deterministic from a seed: sample ``i`` of ``ShapesDataset(seed)`` is the
same image and caption on every machine. The five-pointed star is drawable but never
sampled for training; personalization uses it as the novel subject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
TRAIN_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
HELDOUT_SHAPE = "star"
ALL_SHAPES: tuple[str, ...] = (*TRAIN_SHAPES, HELDOUT_SHAPE)

# Caption templates with attributes dropped; weights sum to 1 with EMPTY_CAPTION_RATE.
EMPTY_CAPTION_RATE = 0.10
_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a {fg} {shape} on a {bg} background", 0.50),
    ("a {fg} {shape}", 0.08),
    ("a {shape} on a {bg} background", 0.08),
    ("a {fg} shape on a {bg} background", 0.06),
    ("a {shape}", 0.05),
    ("a shape on a {bg} background", 0.05),
    ("a {fg} shape", 0.04),
    ("a shape", 0.04),
)
VOCABULARY: tuple[str, ...] = (
    "a", "on", "background", "shape", *COLOR_NAMES, *TRAIN_SHAPES,
)


@dataclass(frozen=True)
class ShapeSpec:
    """One image: what is drawn and where (fractions of the side, so any resolution works)."""

    shape: str
    fg: str
    bg: str
    size: float  # side of the bounding box, fraction of the image side (0.40-0.75)
    cx: float  # centre x, fraction of the side
    cy: float  # centre y, fraction of the side

    def full_caption(self) -> str:
        return f"a {self.fg} {self.shape} on a {self.bg} background"


def full_caption(fg: str, shape: str, bg: str) -> str:
    return f"a {fg} {shape} on a {bg} background"


def prompt_vocabulary() -> dict[str, object]:
    """The full captions as a prompt vocabulary (the model folder's ``prompt_vocabulary.json``, which
    prompt exploration in the refiner reads); slots in the template's order."""
    return {"template": full_caption("{fg}", "{shape}", "{bg}"),
            "slots": {"fg": list(COLOR_NAMES), "shape": list(TRAIN_SHAPES), "bg": list(COLOR_NAMES)},
            "distinct": [["fg", "bg"]]}


def random_spec(
    rng: np.random.Generator,
    shape: str | None = None,
    fg: str | None = None,
    bg: str | None = None,
    shapes: tuple[str, ...] = TRAIN_SHAPES,
) -> ShapeSpec:
    """Draw a spec; fixed attributes are kept, the rest random (foreground != background)."""
    shape = shape or shapes[int(rng.integers(len(shapes)))]
    if fg is None:
        choices = [c for c in COLOR_NAMES if c != bg]
        fg = choices[int(rng.integers(len(choices)))]
    if bg is None:
        choices = [c for c in COLOR_NAMES if c != fg]
        bg = choices[int(rng.integers(len(choices)))]
    if fg == bg:
        raise ValueError(f"foreground and background must differ, both are {fg!r}")
    size = float(rng.uniform(0.40, 0.75))
    half = size / 2
    cx = float(rng.uniform(half + 0.02, 1 - half - 0.02))
    cy = float(rng.uniform(half + 0.02, 1 - half - 0.02))
    return ShapeSpec(shape, fg, bg, size, cx, cy)


def _star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    inner = r * 0.40
    pts = []
    for k in range(10):
        ang = -math.pi / 2 + k * math.pi / 5
        rad = r if k % 2 == 0 else inner
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def render(spec: ShapeSpec, resolution: int = 64, supersample: int = 4) -> Image.Image:
    """Draw the spec as an RGB image, anti-aliased by supersampling."""
    big = resolution * supersample
    img = Image.new("RGB", (big, big), COLORS[spec.bg])
    draw = ImageDraw.Draw(img)
    fill = COLORS[spec.fg]
    cx, cy, s = spec.cx * big, spec.cy * big, spec.size * big
    h = s / 2
    if spec.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif spec.shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif spec.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif spec.shape == "star":
        # Circumradius so the star's bounding box is about `size` tall.
        draw.polygon(_star_points(cx, cy + 0.05 * s, h * 1.05), fill=fill)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; known: {', '.join(ALL_SHAPES)}")
    if supersample > 1:
        img = img.resize((resolution, resolution), Image.Resampling.BOX)
    return img


def caption_for(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A training caption: full, partial (attributes dropped) or empty."""
    u = float(rng.random())
    if u < EMPTY_CAPTION_RATE:
        return ""
    u -= EMPTY_CAPTION_RATE
    for template, weight in _TEMPLATES:
        if u < weight:
            return template.format(fg=spec.fg, shape=spec.shape, bg=spec.bg)
        u -= weight
    return spec.full_caption()


class ShapesDataset:
    """Indexable, deterministic stream of (spec, caption) for training and evaluation."""

    def __init__(self, seed: int, shapes: tuple[str, ...] = TRAIN_SHAPES) -> None:
        self.seed = seed
        self.shapes = shapes

    def spec(self, index: int) -> ShapeSpec:
        return random_spec(np.random.default_rng([self.seed, index, 0]), shapes=self.shapes)

    def caption(self, index: int, epoch: int = 0) -> str:
        # Captions vary per epoch so one image is seen under several attribute subsets.
        return caption_for(self.spec(index), np.random.default_rng([self.seed, index, 1 + epoch]))

    def image(self, index: int, resolution: int = 64) -> Image.Image:
        return render(self.spec(index), resolution)


def to_array(img: Image.Image) -> np.ndarray:
    """PIL RGB -> float32 HWC in [0, 1]."""
    return np.asarray(img, dtype=np.float32) / 255.0


# Seeds of the fixed streams; evaluation never draws from the training stream.
TRAIN_SEED = 0
EVAL_SEED = 1_000_003
UPSCALER_TRAIN_SEED = 7
UPSCALER_EVAL_SEED = 2_000_003
