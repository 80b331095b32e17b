"""synthetic_OC: ordinal response sequences sampled from a GPCM, generated (never downloaded) and validated.

As the public Deep-GPCM generator: abilities theta ~ N(0, 1) per student; per question a
discrimination alpha ~ LogNormal(0, 0.3), a difficulty b_q ~ N(0, 1) and K-1 sorted thresholds
~ N(b_q, 0.5); each student answers a uniform(min, max) number of questions drawn uniformly with
replacement; responses are sampled from the GPCM. Question ids are 1..Q (0 is padding). 80/20 split
of students. Beside the responses it keeps what the generating GPCM itself predicts at each position (its most
probable category, `oracle`): no model of these data can beat that predictor's categorical accuracy in
expectation, so its metrics are the ceiling a trained model is read against. Everything is drawn at once with
numpy from one seed, so a parameter set always gives the same data (and the on-disk cache key is that parameter
set).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

GENERATOR_VERSION = 2
"""Bump when the generator changes, so cached data from the old one is never served (2: the oracle's predictions
added; the same draws, so the same questions and responses as 1)."""
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


def gpcm_logits(theta: np.ndarray, alpha: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """GPCM category logits (..., K): logit_k = sum over h < k of alpha * (theta - threshold_h), logit_0 = 0.
    `theta` and `alpha` broadcast against `thresholds` (..., K-1) without its last axis."""
    steps = alpha[..., None] * (theta[..., None] - thresholds)  # (..., K-1)
    return np.concatenate([np.zeros_like(steps[..., :1]), np.cumsum(steps, axis=-1)], axis=-1)


def draw_parameters(rng: np.random.Generator, spec: SyntheticOCSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generating GPCM, the generator's first draws: abilities theta (S,), discriminations alpha (Q,) and sorted
    thresholds (Q, K-1) around each question's difficulty."""
    theta = rng.normal(0.0, 1.0, spec.n_students)
    alpha = rng.lognormal(0.0, 0.3, spec.n_questions)
    difficulty = rng.normal(0.0, 1.0, spec.n_questions)
    thresholds = np.sort(rng.normal(difficulty[:, None], 0.5, (spec.n_questions, spec.n_cats - 1)), axis=1)
    return theta, alpha, thresholds


def generate_synthetic_oc(spec: SyntheticOCSpec) -> dict[str, np.ndarray]:
    """Padded questions/responses (S, max_len) int64, lengths (S,), the train/eval student indices, and the
    generating GPCM's own most probable category at each position (`oracle`, (S, max_len), 0 at padding)."""
    rng = np.random.default_rng(spec.seed)
    n_s, n_q, k = spec.n_students, spec.n_questions, spec.n_cats
    theta, alpha, thresholds = draw_parameters(rng, spec)
    lengths = rng.integers(spec.min_seq_len, spec.max_seq_len + 1, n_s)
    valid = np.arange(spec.max_seq_len)[None, :] < lengths[:, None]  # (S, T)
    questions = np.where(valid, rng.integers(1, n_q + 1, (n_s, spec.max_seq_len)), 0)
    item = np.maximum(questions - 1, 0)
    logits = gpcm_logits(theta[:, None], alpha[item], thresholds[item])  # (S, T, K)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
    # inverse-CDF sampling; min() guards the last bin against cdf[-1] rounding to just under 1
    responses = np.minimum((rng.random((n_s, spec.max_seq_len, 1)) > cdf).sum(-1), k - 1)
    responses = np.where(valid, responses, 0)
    oracle = np.where(valid, logits.argmax(-1), 0)
    order = rng.permutation(n_s)
    n_train = min(max(int(TRAIN_FRACTION * n_s), 1), n_s - 1)
    return {"questions": questions.astype(np.int64), "responses": responses.astype(np.int64),
            "lengths": lengths.astype(np.int64), "train_idx": np.sort(order[:n_train]),
            "eval_idx": np.sort(order[n_train:]), "oracle": oracle.astype(np.int64)}


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
                 n_questions: int, n_cats: int, oracle: torch.Tensor | None = None) -> None:
        validate_sequences(questions, responses, lengths, n_questions, n_cats)
        self.questions, self.responses, self.lengths = questions, responses, lengths
        self.oracle = oracle
        """The generating model's most probable category per position (generated data only; else None)."""

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
                                 torch.from_numpy(data["lengths"][idx]), n_questions=n_questions, n_cats=n_cats,
                                 oracle=torch.from_numpy(data["oracle"][idx]) if "oracle" in data else None)
    return subset("train_idx"), subset("eval_idx")


def collate_padded(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of (questions, responses) to the longest: {"questions", "responses"} (B, T), 0 = padding."""
    questions = pad_sequence([q for q, _ in items], batch_first=True, padding_value=0)
    responses = pad_sequence([r for _, r in items], batch_first=True, padding_value=0)
    return {"questions": questions, "responses": responses}
