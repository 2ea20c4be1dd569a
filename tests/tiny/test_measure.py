"""The judge every evaluation relies on must itself be right: on renders and on noise."""

import numpy as np
import pytest

from philip.tiny.dataset import ALL_SHAPES, COLOR_NAMES, EVAL_SEED, ShapesDataset, ShapeSpec, render
from philip.tiny.measure import UNKNOWN, measure, target_distance


def test_renders_are_judged_correctly() -> None:
    ds = ShapesDataset(EVAL_SEED, shapes=ALL_SHAPES)
    n, hits = 200, {"fg": 0, "bg": 0, "shape": 0}
    for i in range(n):
        spec, m = ds.spec(i), measure(ds.image(i))
        hits["fg"] += m.fg == spec.fg
        hits["bg"] += m.bg == spec.bg
        hits["shape"] += m.shape == spec.shape
    assert hits["fg"] / n >= 0.98
    assert hits["bg"] / n >= 0.98
    assert hits["shape"] / n >= 0.97


@pytest.mark.parametrize("size", [0.40, 0.55, 0.75])
def test_star_is_not_a_training_shape(size: float) -> None:
    m = measure(render(ShapeSpec("star", "yellow", "purple", size, 0.5, 0.5)))
    assert m.shape == "star"
    assert m.solidity < 0.8


def test_noise_scores_near_chance() -> None:
    rng = np.random.default_rng(0)
    ds = ShapesDataset(EVAL_SEED)
    n, fg, bg, shape = 200, 0, 0, 0
    for i in range(n):
        m = measure((rng.random((64, 64, 3)) * 255).astype(np.uint8))
        spec = ds.spec(i)
        fg += m.fg == spec.fg
        bg += m.bg == spec.bg
        shape += m.shape == spec.shape
    chance = 1 / len(COLOR_NAMES)
    assert fg / n < chance + 0.1
    assert bg / n < chance + 0.1
    assert shape / n < 0.4


def test_plain_image_has_no_shape() -> None:
    m = measure(np.full((64, 64, 3), 40, dtype=np.uint8))
    assert m.shape == UNKNOWN
    assert m.fg == UNKNOWN


def test_target_distance_counts_missed_attributes() -> None:
    m = measure(render(ShapeSpec("circle", "red", "blue", 0.6, 0.5, 0.5)))
    assert target_distance(m, "red", "blue", "circle") == 0
    assert target_distance(m, "green", None, "square") == 2


def test_shapes_as_the_model_draws_them_vae_round_trips() -> None:
    """The judge is calibrated on what philip-tiny can draw at all: renders through its VAE.
    Big stars stay stars; no circle, square or triangle is taken for one."""
    import torch

    from philip.models.pipelines import load_pipeline

    pipe = load_pipeline("models/philip-tiny")
    rng = np.random.default_rng(7)
    specs = [ShapeSpec(shape, fg, bg, float(rng.uniform(0.62, 0.75)), 0.5, 0.5)
             for shape in ALL_SHAPES for fg, bg in [("green", "white"), ("white", "blue"), ("red", "black"),
                                                    ("yellow", "purple"), ("blue", "orange")]]
    pixels = torch.stack([torch.from_numpy(np.asarray(render(s), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for s in specs])
    with torch.no_grad():
        out = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
    images = ((out.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    judged = [measure(image).shape for image in images]
    assert judged == [s.shape for s in specs]
