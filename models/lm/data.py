"""A synthetic, learnable corpus with the seed-004 length statistics, and max_length chunking.

Text is a sparse first-order Markov chain over a Zipf-weighted vocabulary: every token has four
likely successors (p = 0.6, 0.25, 0.1, 0.05), so a model can learn it (next-token accuracy of an
oracle is about 60%) and it is not uniform noise.

Lengths follow the figures seed 004 quotes: mean about 88 tokens, max 659, and 4,263 of 7,440
sequences (57%) longer than 128. Those three cannot come from a smooth distribution (57% above 128
with a mean of 88 forces the long ones to sit just above 128 and the rest to be short), so lengths
are a two-part mixture: short lines of 4-40 tokens and paragraphs of 129 + a geometric excess,
plus one 659-token outlier. The seed's chunk count (7,440 -> 9,619 after chunking at 128, "4,263
were split") is also inconsistent: every split sequence adds at least one chunk, so 4,263 splits
give at least 11,703; `chunk_stats` reports what chunking really produces.
"""

from __future__ import annotations

import numpy as np
import torch

PAD = 0
IGNORE = -100  # cross-entropy's ignore_index: padding never counts in the loss
SEED_SEQUENCES = 7440
SEED_LONG_FRACTION = 4263 / 7440
SEED_MAX_LEN = 659


def sequence_lengths(n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Lengths with the seed's mean ~88 / max 659 / 57% > 128 shape, multiplied by `scale`."""
    long = rng.random(n) < SEED_LONG_FRACTION
    short_len = rng.integers(4, 41, size=n)
    long_len = 129 + rng.geometric(1 / 9.0, size=n) - 1
    lengths = np.where(long, long_len, short_len).astype(np.float64)
    lengths[rng.integers(n)] = SEED_MAX_LEN  # the seed's longest paragraph
    lengths = np.clip(lengths, 4, SEED_MAX_LEN)
    return np.maximum(np.round(lengths * scale), 3).astype(np.int64)


SLOT_PROBS = (0.6, 0.25, 0.1, 0.05)
"""The probability of each token's first, second, third and fourth successor slot."""


def transition_table(vocab_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(successors (V, 4), cumulative probabilities (4,)) of the Markov chain; token 0 is padding."""
    ranks = np.arange(1, vocab_size, dtype=np.float64)
    zipf = 1.0 / ranks
    zipf /= zipf.sum()
    successors = rng.choice(np.arange(1, vocab_size), size=(vocab_size, 4), p=zipf)
    cumulative = np.cumsum(SLOT_PROBS)
    return successors, cumulative


def successor_probs(successors: np.ndarray) -> np.ndarray:
    """(V, 4): the probability of each slot's token as the next one (a token two slots point at gets both)."""
    same = successors[:, :, None] == successors[:, None, :]
    return (same * np.asarray(SLOT_PROBS)[None, None, :]).sum(axis=-1)


def next_token_entropy(successors: np.ndarray) -> np.ndarray:
    """H(next | current = i) in nats for every token i: the loss per token of a model that knows the chain.
    Summed over slots, each weighted by its own probability: sum_k p_k log q(slot k's token)."""
    return -(np.asarray(SLOT_PROBS)[None, :] * np.log(successor_probs(successors))).sum(axis=1)


def entropy_rate(successors: np.ndarray, iterations: int = 10_000) -> float:
    """The chain's entropy rate in nats per token, sum_i pi_i H(next | i) with pi its stationary distribution
    (the lowest loss per token any model can reach on a long stretch of text). pi by power iteration of the lazy
    chain (same stationary distribution, never periodic), four successors a token: O(V) a step, no V x V matrix
    (the seed's 50,000-token vocabulary would need 20 GB)."""
    vocab = successors.shape[0]
    weights = np.asarray(SLOT_PROBS)[None, :]
    pi = np.full(vocab, 1.0 / (vocab - 1))
    pi[0] = 0.0  # padding never occurs
    for _ in range(iterations):
        nxt = (pi + np.bincount(successors.ravel(), weights=(pi[:, None] * weights).ravel(), minlength=vocab)) / 2
        done = np.abs(nxt - pi).sum() < 1e-12
        pi = nxt
        if done:
            break
    return float(pi @ next_token_entropy(successors))


def generate_corpus(n: int, vocab_size: int, length_scale: float, seed: int) -> dict[str, torch.Tensor]:
    """`n` sequences as one flat token tensor plus offsets (compact, fast to cache)."""
    if vocab_size < 8:
        raise ValueError(f"knob 'vocab_size': bad value {vocab_size}; use at least 8")
    rng = np.random.default_rng(seed)
    lengths = sequence_lengths(n, length_scale, rng)
    successors, cumulative = transition_table(vocab_size, rng)
    max_len = int(lengths.max())
    tokens = np.zeros((n, max_len), dtype=np.int64)  # (N, T) padded while generating
    tokens[:, 0] = rng.integers(1, vocab_size, size=n)
    draws = rng.random((n, max_len))
    for t in range(1, max_len):  # vectorised over sequences; one pass per position
        choice = np.searchsorted(cumulative, draws[:, t], side="right").clip(max=3)
        tokens[:, t] = successors[tokens[:, t - 1], choice]
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    return {"flat": torch.from_numpy(tokens[mask]), "lengths": torch.from_numpy(lengths),
            "entropy": torch.from_numpy(next_token_entropy(successors)),
            "entropy_rate": torch.tensor(entropy_rate(successors))}


def split_sequences(corpus: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The corpus as a list of 1-D token tensors."""
    return list(torch.split(corpus["flat"], corpus["lengths"].tolist()))


def chunk(sequences: list[torch.Tensor], max_length: int) -> list[torch.Tensor]:
    """Split every sequence into pieces of at most `max_length` tokens: 659 -> 5 x 128 + 19.

    (Seed 004 says 5 x 128 + 35, which adds up to 675.)

    A final piece of a single token has no next-token target and is dropped.
    """
    if max_length <= 0:
        return sequences
    out = []
    for seq in sequences:
        out += [piece for piece in torch.split(seq, max_length) if len(piece) >= 2]
    return out


def chunk_stats(sequences: list[torch.Tensor], max_length: int) -> dict[str, float]:
    """Length statistics before and after chunking (what the seed's note tried to report)."""
    lengths = np.array([len(s) for s in sequences])
    chunks = chunk(sequences, max_length)
    return {"sequences": len(sequences), "mean_len": float(lengths.mean()), "max_len": int(lengths.max()),
            "longer_than_128": int((lengths > 128).sum()), "chunks": len(chunks)}


class TokenDataset(torch.utils.data.Dataset):
    """Sequences of token ids (each at least 2 tokens)."""

    def __init__(self, sequences: list[torch.Tensor], entropy: torch.Tensor | None = None,
                 entropy_rate: float | None = None) -> None:
        self.sequences = sequences
        self.entropy = entropy
        """H(next | token) in nats per token id (the generator's chain), for the achievable loss."""
        self.entropy_rate = entropy_rate

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.sequences[i]


def collate_padded(batch: list[torch.Tensor]) -> dict[str, object]:
    """Right-pad to the longest sequence: tokens (B, T), targets (B, T-1) with -100 at padding."""
    lengths = [len(s) for s in batch]
    tokens = torch.full((len(batch), max(lengths)), PAD, dtype=torch.long)
    for i, seq in enumerate(batch):
        tokens[i, : len(seq)] = seq
    targets = tokens[:, 1:].clone()
    targets[torch.arange(max(lengths) - 1)[None, :] >= torch.tensor(lengths)[:, None] - 1] = IGNORE
    return {"tokens": tokens, "targets": targets, "lengths": lengths}
