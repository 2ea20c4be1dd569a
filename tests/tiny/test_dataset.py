from pathlib import Path

from philip.tiny.architecture import build_tokenizer
from philip.tiny.dataset import HELDOUT_SHAPE, TRAIN_SEED, VOCABULARY, ShapesDataset, render


def test_dataset_is_deterministic() -> None:
    a, b = ShapesDataset(TRAIN_SEED), ShapesDataset(TRAIN_SEED)
    for i in (0, 17, 999):
        assert a.spec(i) == b.spec(i)
        assert a.caption(i, epoch=3) == b.caption(i, epoch=3)
        assert a.image(i).tobytes() == b.image(i).tobytes()


def test_star_never_in_training_stream_and_colours_differ() -> None:
    ds = ShapesDataset(TRAIN_SEED)
    specs = [ds.spec(i) for i in range(3000)]
    assert all(s.shape != HELDOUT_SHAPE for s in specs)
    assert all(s.fg != s.bg for s in specs)
    assert all(0.40 <= s.size <= 0.75 for s in specs)


def test_captions_mix_full_partial_and_empty() -> None:
    ds = ShapesDataset(TRAIN_SEED)
    captions = [ds.caption(i) for i in range(4000)]
    empty = sum(c == "" for c in captions) / len(captions)
    full = sum(c.endswith("background") and c.split()[2] != "shape" and len(c.split()) == 7 for c in captions)
    assert 0.08 <= empty <= 0.12
    assert 0.4 <= full / len(captions) <= 0.6
    assert {"a circle", "a shape"} <= set(captions)
    assert all(HELDOUT_SHAPE not in c for c in captions)


def test_renderer_makes_256px_versions() -> None:
    ds = ShapesDataset(TRAIN_SEED)
    assert ds.image(0, 256).size == (256, 256)
    assert render(ds.spec(0), 64).size == (64, 64)


def test_tokenizer_round_trip_and_new_token(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path)
    caption = "a purple triangle on a white background"
    ids = tok(caption).input_ids
    assert len(ids) == len(caption.split()) + 2  # one token per word, plus BOS/EOS
    assert tok.decode(ids, skip_special_tokens=True).strip() == caption
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in VOCABULARY)
    assert len(tok("sks", add_special_tokens=False).input_ids) > 1  # unknown words fall back to characters
    before = len(tok)
    assert tok.add_tokens(["sks"]) == 1
    assert len(tok) == before + 1
    assert tok("a sks", add_special_tokens=False).input_ids == [ids[1], before]
