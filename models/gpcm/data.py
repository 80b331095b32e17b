"""synthetic_OC: ordinal response sequences sampled from a GPCM, generated (never downloaded) and validated.

As the public Deep-GPCM generator: abilities theta ~ N(0, 1) per student; per question a
discrimination alpha ~ LogNormal(0, 0.3), a difficulty b_q ~ N(0, 1) and K-1 sorted thresholds
~ N(b_q, 0.5); each student answers a uniform(min, max) number of questions drawn uniformly with
replacement; responses are sampled from the GPCM. Question ids are 1..Q (0 is padding). 80/20 split
of students. Everything is drawn at once with numpy from one seed, so a parameter set always gives
the same data (and the on-disk cache key is that parameter set).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

GENERATOR_VERSION = 1
"""Bump when the generator changes, so cached data from the old one is never served."""
TRAIN_FRACTION = 0.8


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticOCSpec:
    """Generator settings; every field is part of the cache key."""

    n_students: int
    n_questions: int
    n_cats: int
    min_seq_len: int
    max_seq_len: int
    seed: int

    def __post_init__(self) -> None:
        if self.n_cats < 2:
            raise ValueError(f"n_cats={self.n_cats}: ordinal responses need at least 2 categories; use n_cats >= 2")
        if not 1 <= self.min_seq_len <= self.max_seq_len:
            raise ValueError(f"min_seq_len={self.min_seq_len}, max_seq_len={self.max_seq_len}: "
                             "need 1 <= min_seq_len <= max_seq_len")
        if self.n_students < 2 or self.n_questions < 1:
            raise ValueError(f"n_students={self.n_students}, n_questions={self.n_questions}: "
                             "need at least 2 students (one per split) and 1 question")


def generate_synthetic_oc(spec: SyntheticOCSpec) -> dict[str, np.ndarray]:
    """Padded questions/responses (S, max_len) int64, lengths (S,), and the train/eval student indices."""
    rng = np.random.default_rng(spec.seed)
    n_s, n_q, k = spec.n_students, spec.n_questions, spec.n_cats
    theta = rng.normal(0.0, 1.0, n_s)
    alpha = rng.lognormal(0.0, 0.3, n_q)
    difficulty = rng.normal(0.0, 1.0, n_q)
    thresholds = np.sort(rng.normal(difficulty[:, None], 0.5, (n_q, k - 1)), axis=1)  # (Q, K-1)
    lengths = rng.integers(spec.min_seq_len, spec.max_seq_len + 1, n_s)
    valid = np.arange(spec.max_seq_len)[None, :] < lengths[:, None]  # (S, T)
    questions = np.where(valid, rng.integers(1, n_q + 1, (n_s, spec.max_seq_len)), 0)
    item = np.maximum(questions - 1, 0)
    steps = alpha[item][..., None] * (theta[:, None, None] - thresholds[item])  # (S, T, K-1)
    logits = np.concatenate([np.zeros_like(steps[..., :1]), np.cumsum(steps, axis=-1)], axis=-1)  # (S, T, K)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
    # inverse-CDF sampling; min() guards the last bin against cdf[-1] rounding to just under 1
    responses = np.minimum((rng.random((n_s, spec.max_seq_len, 1)) > cdf).sum(-1), k - 1)
    responses = np.where(valid, responses, 0)
    order = rng.permutation(n_s)
    n_train = min(max(int(TRAIN_FRACTION * n_s), 1), n_s - 1)
    return {"questions": questions.astype(np.int64), "responses": responses.astype(np.int64),
            "lengths": lengths.astype(np.int64), "train_idx": np.sort(order[:n_train]),
            "eval_idx": np.sort(order[n_train:])}


def spec_params(spec: SyntheticOCSpec) -> dict[str, int]:
    """The cache-key parameters of a spec (generator version included)."""
    return {**asdict(spec), "version": GENERATOR_VERSION}


def validate_sequences(questions: torch.Tensor, responses: torch.Tensor, lengths: torch.Tensor,
                       n_questions: int, n_cats: int) -> None:
    """ValueError naming the first bad entry: ids must be in 1..n_questions, responses in 0..n_cats-1."""
    if n_cats < 2:
        raise ValueError(f"n_cats={n_cats}: ordinal responses need at least 2 categories; use n_cats >= 2")
    if questions.shape != responses.shape or questions.dim() != 2 or lengths.shape != questions.shape[:1]:
        raise ValueError(f"questions {tuple(questions.shape)}, responses {tuple(responses.shape)} and lengths "
                         f"{tuple(lengths.shape)} must be (S, T), (S, T) and (S,)")
    if len(lengths) and not bool(((lengths >= 1) & (lengths <= questions.shape[1])).all()):
        bad = int(torch.nonzero((lengths < 1) | (lengths > questions.shape[1]))[0, 0])
        raise ValueError(f"sequence {bad} has length {int(lengths[bad])}; lengths must be in 1..{questions.shape[1]}")
    valid = torch.arange(questions.shape[1]) < lengths.unsqueeze(1)  # (S, T)
    checks = (("question id", questions, 1, n_questions, "n_questions (the vocabulary)"),
              ("response", responses, 0, n_cats - 1, "n_cats (K)"))
    for what, values, lo, hi, knob in checks:
        bad = valid & ((values < lo) | (values > hi))
        if bool(bad.any()):
            s, t = (int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{what} {int(values[s, t])} at sequence {s}, position {t} is outside {lo}..{hi}; "
                             f"fix the data or raise {knob}")


class ResponseSequences(Dataset):
    """Students' (questions, responses) sequences, validated on construction; items are unpadded."""

    def __init__(self, questions: torch.Tensor, responses: torch.Tensor, lengths: torch.Tensor, *,
                 n_questions: int, n_cats: int) -> None:
        validate_sequences(questions, responses, lengths, n_questions, n_cats)
        self.questions, self.responses, self.lengths = questions, responses, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.lengths[index])
        return self.questions[index, :n], self.responses[index, :n]


def split_datasets(data: dict[str, np.ndarray], n_questions: int, n_cats: int
                   ) -> tuple[ResponseSequences, ResponseSequences]:
    """(train, eval) datasets from `generate_synthetic_oc`'s output."""
    def subset(key: str) -> ResponseSequences:
        idx = data[key]
        return ResponseSequences(torch.from_numpy(data["questions"][idx]), torch.from_numpy(data["responses"][idx]),
                                 torch.from_numpy(data["lengths"][idx]), n_questions=n_questions, n_cats=n_cats)
    return subset("train_idx"), subset("eval_idx")


def collate_padded(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of (questions, responses) to the longest: {"questions", "responses"} (B, T), 0 = padding."""
    questions = pad_sequence([q for q, _ in items], batch_first=True, padding_value=0)
    responses = pad_sequence([r for _, r in items], batch_first=True, padding_value=0)
    return {"questions": questions, "responses": responses}
