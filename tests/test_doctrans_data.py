"""doctrans data: rendering, translation, determinism, collation, and the evaluation plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.registry import resolve
from models.doctrans.data import (
    BOS,
    EOS,
    FIRST_TOKEN,
    PAD,
    PageCollate,
    PageSpec,
    generate_split,
    make_glyphs,
    render,
    translate,
)
from models.doctrans.workload import page_spec


def test_translate_maps_then_reverses_inside_windows():
    mapping = np.arange(10)
    mapping[FIRST_TOKEN:] = mapping[FIRST_TOKEN:][::-1]  # 3<->9, 4<->8, 5<->7, 6<->6
    source = np.array([[3, 4, 5, 6, 7, PAD], [3, 4, 5, PAD, PAD, PAD]])
    lengths = np.array([5, 3])
    # windows of 2: (3 4)(5 6)(7) -> (4 3)(6 5)(7) -> mapped (8 9)(6 7)(5); (3 4)(5) -> (4 3)(5) -> (8 9)(7)
    expected = np.array([[8, 9, 6, 7, 5, PAD], [8, 9, 7, PAD, PAD, PAD]])
    np.testing.assert_array_equal(translate(source, lengths, mapping, 2), expected)


def test_glyphs_are_distinct_and_visible_and_specials_blank():
    glyphs = make_glyphs(np.random.default_rng(0), 40, 3)
    content = glyphs[FIRST_TOKEN:].reshape(37, -1)
    assert len(np.unique(content, axis=0)) == 37
    assert content.sum(1).min() > 0
    assert glyphs[:FIRST_TOKEN].sum() == 0


def test_render_places_each_glyph_in_reading_order():
    # A page exactly the size of the text block: no margin slack, so the layout is fixed.
    spec = PageSpec(image_h=12, image_w=16, glyph_px=4, vocab_size=12, min_len=1, max_len=8, noise_std=0.0,
                    reorder_window=1, data_seed=0)
    glyphs = make_glyphs(np.random.default_rng(1), 12, 4)
    tokens = np.array([[3, 4, 5, 6, 7, 8, PAD, PAD]])
    ink = render(tokens, glyphs, spec, np.random.default_rng(2))[0] > 0  # (12, 16)
    for i, token in enumerate(tokens[0]):
        row, col = divmod(i, 4)
        cell = ink[row * 6: row * 6 + 4, col * 4: col * 4 + 4]
        np.testing.assert_array_equal(cell, glyphs[token].astype(bool))
    assert not ink[4:6].any() and not ink[10:12].any()  # the gaps between lines stay blank


def test_targets_are_bos_translation_eos_and_generation_is_deterministic():
    cfg = resolve("doctrans", {"preset": "tiny"})
    wl = cfg.get_workload()
    split = generate_split(page_spec(cfg), 8, 1)
    again = generate_split(page_spec(cfg), 8, 1)
    for key in split:
        assert torch.equal(split[key], again[key])
    t, n = split["targets"], split["lengths"]
    assert (t[:, 0] == BOS).all()
    assert (t[torch.arange(8), n + 1] == EOS).all()
    assert ((t[:, 1:-1] >= FIRST_TOKEN) == (torch.arange(cfg.max_len) < n[:, None])).all()
    train, evalset = wl.build_datasets(cfg)
    train2, _ = wl.build_datasets(resolve("doctrans", {"preset": "tiny"}))  # served from the cache
    assert torch.equal(train.images, train2.images)
    assert len(train) == cfg.train_samples and len(evalset) == cfg.eval_samples
    assert not torch.equal(train.images[: len(evalset)], evalset.images)  # different splits
    other = wl.build_datasets(resolve("doctrans", {"preset": "tiny", "data_seed": 1}))[0]
    assert not torch.equal(train.images, other.images)


def test_collate_pads_right_and_shifts_targets():
    items = [{"image": torch.full((4, 4), 255, dtype=torch.uint8), "target": torch.tensor([BOS, 5, 6, EOS])},
             {"image": torch.zeros(4, 4, dtype=torch.uint8), "target": torch.tensor([BOS, 7, EOS])}]
    batch = PageCollate()(items)
    assert batch["image"].shape == (2, 1, 4, 4) and batch["image"].max() == 1.0
    assert batch["tokens_in"].tolist() == [[BOS, 5, 6], [BOS, 7, EOS]]
    assert batch["labels"].tolist() == [[5, 6, EOS], [7, EOS, PAD]]


class _Oracle(nn.Module):
    """A 'model' that reads the reference translation of each page: evaluation must score it 1.0."""

    def __init__(self, dataset, vocab_size: int) -> None:
        super().__init__()
        self.images = dataset.images.float().flatten(1) / 255.0
        self.targets, self.vocab_size = dataset.targets, vocab_size

    def encode(self, image):
        idx = torch.cdist(image.flatten(1), self.images).argmin(1)
        return torch.cat([self.targets[idx], torch.zeros_like(self.targets[idx])], 1), None

    def decoder(self, tokens, memory):
        return nn.functional.one_hot(memory[:, 1: tokens.shape[1] + 1], self.vocab_size).float()

    def forward(self, image, tokens_in):
        return self.decoder(tokens_in, self.encode(image)[0])


def test_evaluate_scores_the_reference_perfectly_and_a_random_model_low():
    cfg = resolve("doctrans", {"preset": "tiny"})
    wl = cfg.get_workload()
    _, evalset = wl.build_datasets(cfg)
    perfect = wl.evaluate(_Oracle(evalset, cfg.vocab_size), evalset, cfg, torch.device("cpu"))
    assert perfect == {"bleu": pytest.approx(1.0), "token_accuracy": pytest.approx(1.0)}
    torch.manual_seed(0)
    with torch.no_grad():
        untrained = wl.evaluate(wl.build_model(cfg).eval(), evalset, cfg, torch.device("cpu"))
    assert set(untrained) == set(wl.quality_metrics)
    assert 0.0 <= untrained["bleu"] < 0.5 and 0.0 <= untrained["token_accuracy"] < 0.5
