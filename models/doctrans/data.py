"""Synthetic document pages: source token sequences rendered as glyph text, and their "translation".

Each source token has a fixed random glyph bitmap; a page is the source sequence typeset left to
right into lines of glyphs, shifted by a random margin, with random ink contrast and Gaussian noise.
The target is a deterministic translation of the source: every token is mapped through a fixed
permutation of the vocabulary, then the order is reversed inside consecutive windows of
`reorder_window` tokens (a stand-in for local word-order changes between languages). The task is
learnable from the pixels alone and has one right answer, so BLEU and token accuracy mean something.
Everything is numpy-vectorised, deterministic from `data_seed`, and cached on disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness.workload import cached

PAD, BOS, EOS = 0, 1, 2
FIRST_TOKEN = 3
"""Ids below this are special (never rendered); content tokens are FIRST_TOKEN .. vocab_size-1."""
_VERSION = 1  # bump when the generator changes: it is part of the cache key
_CHUNK_PAGES = 128  # pages rendered at once (bounds the temporary float buffers)


@dataclass(frozen=True, kw_only=True, slots=True)
class PageSpec:
    """Everything the generated pages depend on."""

    image_h: int
    image_w: int
    glyph_px: int
    """Side of one glyph bitmap; lines are glyph_px * 1.5 pixels apart."""
    vocab_size: int
    """Including the specials PAD, BOS, EOS."""
    min_len: int
    max_len: int
    """Source (and target) tokens per page, drawn uniformly in [min_len, max_len]."""
    noise_std: float
    reorder_window: int
    data_seed: int

    @property
    def line_px(self) -> int:
        """Height of one text line: the glyph plus a half-glyph gap."""
        return self.glyph_px + self.glyph_px // 2

    @property
    def columns(self) -> int:
        """Glyphs per line."""
        return self.image_w // self.glyph_px

    @property
    def capacity(self) -> int:
        """Most tokens a page can hold."""
        return (self.image_h // self.line_px) * self.columns


def make_glyphs(rng: np.random.Generator, vocab_size: int, glyph_px: int) -> np.ndarray:
    """(vocab, g, g) uint8 bitmaps: blank for the specials, distinct non-blank ones for content tokens."""
    glyphs = np.zeros((vocab_size, glyph_px, glyph_px), np.uint8)
    n = vocab_size - FIRST_TOKEN
    assert 2 ** (glyph_px * glyph_px) > 2 * n, "too few bitmaps for the vocabulary"  # validated upstream
    flat = (rng.random((n, glyph_px * glyph_px)) < 0.5).astype(np.uint8)
    while True:  # redraw duplicates and blanks until every content glyph is unique and visible
        _, first = np.unique(flat, axis=0, return_index=True)
        bad = np.ones(n, bool)
        bad[first] = False
        bad |= flat.sum(1) == 0
        if not bad.any():
            break
        flat[bad] = rng.random((int(bad.sum()), glyph_px * glyph_px)) < 0.5
    glyphs[FIRST_TOKEN:] = flat.reshape(n, glyph_px, glyph_px)
    return glyphs


def make_mapping(rng: np.random.Generator, vocab_size: int) -> np.ndarray:
    """(vocab,) token translation table: a permutation of the content tokens, specials fixed."""
    mapping = np.arange(vocab_size)
    mapping[FIRST_TOKEN:] = FIRST_TOKEN + rng.permutation(vocab_size - FIRST_TOKEN)
    return mapping


def translate(source: np.ndarray, lengths: np.ndarray, mapping: np.ndarray, reorder_window: int) -> np.ndarray:
    """(n, L) PAD-padded source -> (n, L) target: mapped tokens, order reversed inside each window."""
    pos = np.arange(source.shape[1])[None, :]  # (1, L)
    start = (pos // reorder_window) * reorder_window
    end = np.minimum(start + reorder_window, lengths[:, None])  # (n, L): a last window may be short
    real = pos < lengths[:, None]
    index = np.where(real, start + end - 1 - pos, pos)
    return np.where(real, mapping[np.take_along_axis(source, index, axis=1)], PAD)


def render(source: np.ndarray, glyphs: np.ndarray, spec: PageSpec, rng: np.random.Generator) -> np.ndarray:
    """(n, L) PAD-padded tokens -> (n, H, W) uint8 pages (ink bright on a dark background)."""
    n, L = source.shape
    g, line, cols = spec.glyph_px, spec.line_px, spec.columns
    rows = spec.image_h // line
    text_h, text_w = rows * line, cols * g
    pages = np.empty((n, spec.image_h, spec.image_w), np.uint8)
    top = rng.integers(0, spec.image_h - text_h + 1, n)  # random margins
    left = rng.integers(0, spec.image_w - text_w + 1, n)
    contrast = rng.uniform(0.6, 1.0, n).astype(np.float32)
    for lo in range(0, n, _CHUNK_PAGES):
        hi = min(lo + _CHUNK_PAGES, n)
        cells = np.zeros((hi - lo, rows * cols), np.int64)
        cells[:, :L] = source[lo:hi]
        ink = glyphs[cells].reshape(hi - lo, rows, cols, g, g)
        ink = np.pad(ink, ((0, 0), (0, 0), (0, 0), (0, line - g), (0, 0)))  # gap under each line
        text = ink.transpose(0, 1, 3, 2, 4).reshape(hi - lo, text_h, text_w)  # (n, text_h, text_w)
        page = np.zeros((hi - lo, spec.image_h, spec.image_w), np.float32)
        ys = (top[lo:hi, None] + np.arange(text_h))[:, :, None]  # (n, text_h, 1)
        xs = (left[lo:hi, None] + np.arange(text_w))[:, None, :]  # (n, 1, text_w)
        page[np.arange(hi - lo)[:, None, None], ys, xs] = text * contrast[lo:hi, None, None]
        page += rng.normal(0.0, spec.noise_std, page.shape).astype(np.float32)
        pages[lo:hi] = np.round(np.clip(page, 0.0, 1.0) * 255)
    return pages


def generate_split(spec: PageSpec, n: int, split_id: int) -> dict[str, torch.Tensor]:
    """n pages of one split: images (n, H, W) uint8, targets (n, max_len + 2) with BOS/EOS, lengths."""
    table_rng = np.random.default_rng([spec.data_seed, 0])  # glyphs + mapping: shared by all splits
    glyphs = make_glyphs(table_rng, spec.vocab_size, spec.glyph_px)
    mapping = make_mapping(table_rng, spec.vocab_size)
    rng = np.random.default_rng([spec.data_seed, split_id])
    lengths = rng.integers(spec.min_len, spec.max_len + 1, n)
    source = rng.integers(FIRST_TOKEN, spec.vocab_size, (n, spec.max_len))
    source[np.arange(spec.max_len)[None, :] >= lengths[:, None]] = PAD
    target = np.full((n, spec.max_len + 2), PAD, np.int64)
    target[:, 0] = BOS
    target[:, 1:-1] = translate(source, lengths, mapping, spec.reorder_window)
    target[np.arange(n), lengths + 1] = EOS
    return {"images": torch.from_numpy(render(source, glyphs, spec, rng)),
            "targets": torch.from_numpy(target), "lengths": torch.from_numpy(lengths),
            "sources": torch.from_numpy(source)}


class PageDataset(torch.utils.data.Dataset):
    """Map-style dataset of (page image, BOS + target + EOS) pairs."""

    def __init__(self, split: dict[str, torch.Tensor]) -> None:
        self.images, self.targets, self.lengths = split["images"], split["targets"], split["lengths"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": self.targets[i, : int(self.lengths[i]) + 2]}


def build_splits(spec: PageSpec, train_samples: int, eval_samples: int) -> tuple[PageDataset, PageDataset]:
    """(train, eval) datasets, generated once per setting and cached on disk."""
    params: dict[str, Any] = {**asdict(spec), "train": train_samples, "eval": eval_samples, "version": _VERSION}
    splits = cached("doctrans-pages", params, lambda: (generate_split(spec, train_samples, 1),
                                                       generate_split(spec, eval_samples, 2)))
    return PageDataset(splits[0]), PageDataset(splits[1])


class PageCollate:
    """Stack pages as floats in [0, 1]; right-pad targets with PAD into decoder inputs and labels."""

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        images = torch.stack([it["image"] for it in items]).unsqueeze(1).float() / 255.0  # (B, 1, H, W)
        targets = torch.nn.utils.rnn.pad_sequence([it["target"] for it in items], batch_first=True,
                                                  padding_value=PAD)  # (B, T + 1)
        return {"image": images, "tokens_in": targets[:, :-1], "labels": targets[:, 1:]}
