"""The LM workload: duplicate forward, per-sequence vs batched, chunking, corpus statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.engine import run
from harness.equivalence import check_equivalence
from harness.registry import resolve
from models.lm.data import (
    SLOT_PROBS,
    chunk,
    chunk_stats,
    collate_padded,
    entropy_rate,
    generate_corpus,
    next_token_entropy,
    split_sequences,
    transition_table,
)

TINY = {"preset": "tiny", "bench_warmup_steps": 1, "bench_steps": 3}


def test_forward_calls_per_step_is_two_with_the_duplicate_forward_bug() -> None:
    fixed = run(resolve("lm", TINY)).metrics
    buggy = run(resolve("lm", {**TINY, "duplicate_forward": True})).metrics
    assert fixed["forward_calls_per_step"] == 1
    assert buggy["forward_calls_per_step"] == 2
    # The extra forward is real work: the FLOP counter sees it (forward = 1/3 of fwd+bwd FLOPs).
    assert buggy["flops_per_step"] > 1.2 * fixed["flops_per_step"]


def test_forward_calls_count_micro_batches_with_accumulation() -> None:
    metrics = run(resolve("lm", {**TINY, "batch_size": 4, "grad_accum": 2})).metrics
    assert metrics["forward_calls_per_step"] == 1


def test_per_sequence_and_batched_give_the_same_loss_and_gradients() -> None:
    base = resolve("lm", {"preset": "tiny"})
    # float32: scale-free error of loss, logits and every gradient <= 1e-5 (tolerance of the check)
    eq32 = check_equivalence(base, base.replace(forward="per_sequence"))
    assert eq32["passed"] and eq32["max_rel_err"] <= 1e-5, eq32
    assert "outputs" in eq32["compared"]
    # float64: the two modes agree to rounding (<= 1e-10)
    eq64 = check_equivalence(base, base.replace(forward="per_sequence"), dtype=torch.float64)
    assert eq64["passed"] and eq64["max_rel_err"] <= 1e-10, eq64


def test_chunking_matches_the_seed_example() -> None:
    # Seed 004 writes "659 tokens -> 5 chunks of 128 + 1 chunk of 35"; 5 x 128 + 35 = 675, so the
    # real split of 659 tokens is 5 x 128 + 19.
    seq = torch.arange(1, 660)  # 659 tokens
    pieces = chunk([seq], 128)
    assert [len(p) for p in pieces] == [128] * 5 + [19]
    assert torch.equal(torch.cat(pieces), seq)
    tail_dropped = chunk([torch.arange(1, 130)], 128)  # 129 tokens: a 1-token tail has no target
    assert len(tail_dropped) == 1 and torch.equal(tail_dropped[0], torch.arange(1, 129))


def test_corpus_has_the_seed_length_statistics() -> None:
    stats = chunk_stats(split_sequences(generate_corpus(7440, 10000, 1.0, 0)), 128)
    assert stats["sequences"] == 7440 and stats["max_len"] == 659
    assert 80 <= stats["mean_len"] <= 96
    assert stats["longer_than_128"] > 7440 / 2
    # Every sequence of 130+ tokens yields at least two trainable chunks (a 129-token one leaves a
    # 1-token tail, which has no target): far more than the seed's 9,619 from 7,440.
    lengths = generate_corpus(7440, 10000, 1.0, 0)["lengths"]
    assert stats["chunks"] >= 7440 + int((lengths >= 130).sum()) > 9619


def test_corpus_is_deterministic_and_learnable() -> None:
    a, b = generate_corpus(200, 500, 0.2, 7), generate_corpus(200, 500, 0.2, 7)
    assert torch.equal(a["flat"], b["flat"]) and not torch.equal(a["flat"], generate_corpus(200, 500, 0.2, 8)["flat"])
    flat = a["flat"].numpy()
    # A bigram predictor (most frequent successor) beats the unigram guess by a wide margin.
    pairs = np.stack([flat[:-1], flat[1:]], 1)
    successors: dict[int, dict[int, int]] = {}
    for x, y in pairs:
        successors.setdefault(int(x), {}).setdefault(int(y), 0)
        successors[int(x)][int(y)] += 1
    bigram_acc = sum(max(d.values()) for d in successors.values()) / len(pairs)
    unigram_acc = np.bincount(flat).max() / len(flat)
    assert bigram_acc > 0.5 and bigram_acc > 2.5 * unigram_acc, (bigram_acc, unigram_acc)


def test_padding_counts_and_targets() -> None:
    batch = collate_padded([torch.tensor([5, 6, 7]), torch.tensor([8, 9])])
    assert batch["tokens"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["targets"].tolist() == [[6, 7], [9, -100]]
    wl = resolve("lm", {"preset": "tiny"}).get_workload()
    counts = wl.batch_counts(batch, resolve("lm", {"preset": "tiny"}))
    assert (counts.real_tokens, counts.padded_tokens, counts.loss_elements) == (3, 4, 3)
    per_seq = wl.batch_counts(batch, resolve("lm", {"preset": "tiny", "forward": "per_sequence"}))
    assert per_seq.padded_tokens == per_seq.real_tokens == 3


def test_bucketing_cuts_padding() -> None:
    unchunked = {**TINY, "bench_steps": 10, "max_length": 0}
    plain = run(resolve("lm", unchunked)).metrics
    bucketed = run(resolve("lm", {**unchunked, "bucket_by_length": True})).metrics
    waste = lambda m: m["padded_tokens_per_step"] / m["real_tokens_per_step"] - 1  # noqa: E731
    assert waste(bucketed) < 0.5 * waste(plain), (waste(bucketed), waste(plain))


def test_quality_run_reports_metrics_and_a_curve() -> None:
    result = run(resolve("lm", {"preset": "tiny", "epochs": 2, "lr": 3e-3}))
    assert [p["epoch"] for p in result.curve] == [1, 2]
    assert set(result.quality) == {"token_acc", "loss", "perplexity", "excess_loss_pct", "achievable_loss",
                                   "source_entropy"}
    q = result.quality  # the excess is the loss over what the chain itself scores on the same targets
    assert q["loss"] > q["achievable_loss"] > 0
    assert q["excess_loss_pct"] == pytest.approx((q["loss"] / q["achievable_loss"] - 1) * 100)
    assert result.curve[1]["loss"] < result.curve[0]["loss"]
    assert result.curve[0]["wall_s"] < result.curve[1]["wall_s"]


def test_entropy_of_the_chain_against_a_brute_force_estimate_on_a_small_chain() -> None:
    """The generator's own formulas (per-token conditional entropy, entropy rate through the stationary
    distribution) against the average surprisal of a long walk of the same chain."""
    rng = np.random.default_rng(3)
    successors, cumulative = transition_table(12, rng)
    matrix = np.zeros((12, 12))  # the chain as a dense matrix (a small one): P[i, j]
    for slot, p in enumerate(SLOT_PROBS):
        np.add.at(matrix, (np.arange(12), successors[:, slot]), p)
    h = next_token_entropy(successors)
    # a row whose four slots point at four different tokens has the slots' own entropy; merged slots less
    slots = -sum(p * np.log(p) for p in SLOT_PROBS)
    for i in range(1, 12):
        assert h[i] == pytest.approx(slots) if len(set(successors[i])) == 4 else h[i] < slots
    walk = np.empty(400_000, dtype=np.int64)
    walk[0] = 1
    draws = np.searchsorted(cumulative, rng.random(len(walk)), side="right").clip(max=3)
    for t in range(1, len(walk)):
        walk[t] = successors[walk[t - 1], draws[t]]
    surprisal = -np.log(matrix[walk[:-1], walk[1:]]).mean()
    assert entropy_rate(successors) == pytest.approx(surprisal, rel=0.01)
    assert h[walk[:-1]].mean() == pytest.approx(entropy_rate(successors), rel=0.01)
