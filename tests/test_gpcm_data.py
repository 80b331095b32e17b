"""synthetic_OC generator, sequence validation, padding collate, on-disk cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.gpcm.data import (
    ResponseSequences,
    SyntheticOCSpec,
    collate_padded,
    draw_parameters,
    generate_synthetic_oc,
    gpcm_logits,
    split_datasets,
    validate_sequences,
)

SPEC = SyntheticOCSpec(n_students=50, n_questions=12, n_cats=4, min_seq_len=3, max_seq_len=30, seed=7)

def test_generator_is_deterministic_and_well_formed() -> None:
    data = generate_synthetic_oc(SPEC)
    again = generate_synthetic_oc(SPEC)
    other = generate_synthetic_oc(dataclasses.replace(SPEC, seed=8))
    for key in data:
        assert np.array_equal(data[key], again[key]), key
    assert not np.array_equal(data["questions"], other["questions"])
    q, r, lengths = data["questions"], data["responses"], data["lengths"]
    assert q.shape == r.shape == (50, 30) and lengths.shape == (50,)
    assert lengths.min() >= 3 and lengths.max() <= 30
    valid = np.arange(30)[None] < lengths[:, None]
    assert (q[valid] >= 1).all() and (q[valid] <= 12).all() and (q[~valid] == 0).all()
    assert (r[valid] >= 0).all() and (r[valid] <= 3).all() and (r[~valid] == 0).all()
    # 80/20 split of students, disjoint and complete
    assert len(data["train_idx"]) == 40 and len(data["eval_idx"]) == 10
    assert sorted(np.concatenate([data["train_idx"], data["eval_idx"]]).tolist()) == list(range(50))


def test_responses_follow_ability() -> None:
    # The GPCM makes high categories likelier for able students: regenerate the abilities from the
    # same seed (theta is the generator's first draw) and check the correlation with mean response.
    spec = SyntheticOCSpec(n_students=400, n_questions=20, n_cats=4, min_seq_len=40, max_seq_len=40, seed=3)
    data = generate_synthetic_oc(spec)
    theta = np.random.default_rng(3).normal(0.0, 1.0, 400)
    mean_response = data["responses"].mean(1)
    assert np.corrcoef(theta, mean_response)[0, 1] > 0.6
    assert set(np.unique(data["responses"])) == {0, 1, 2, 3}  # every category occurs


def test_bad_generator_settings() -> None:
    with pytest.raises(ValueError, match="n_cats=1"):
        SyntheticOCSpec(n_students=10, n_questions=5, n_cats=1, min_seq_len=2, max_seq_len=4, seed=0)
    with pytest.raises(ValueError, match="min_seq_len=9, max_seq_len=4"):
        SyntheticOCSpec(n_students=10, n_questions=5, n_cats=4, min_seq_len=9, max_seq_len=4, seed=0)


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.tensor([[1, 2, 3], [4, 0, 0]])
    r = torch.tensor([[0, 3, 1], [2, 0, 0]])
    return q, r, torch.tensor([3, 1])


def test_validation_accepts_good_data_and_ignores_padding() -> None:
    q, r, lengths = _tensors()
    r[1, 2] = 99  # beyond the sequence's length: padding, never read
    validate_sequences(q, r, lengths, n_questions=4, n_cats=4)


@pytest.mark.parametrize("where, value, match", [
    ("responses", 4, r"response 4 at sequence 0, position 1 is outside 0..3; .*n_cats"),
    ("responses", -1, r"response -1 at sequence 0, position 1 is outside 0..3"),
    ("questions", 5, r"question id 5 at sequence 0, position 1 is outside 1..4; .*n_questions"),
    ("questions", 0, r"question id 0 at sequence 0, position 1 is outside 1..4"),
])
def test_validation_names_the_bad_entry(where: str, value: int, match: str) -> None:
    q, r, lengths = _tensors()
    (q if where == "questions" else r)[0, 1] = value
    with pytest.raises(ValueError, match=match):
        ResponseSequences(q, r, lengths, n_questions=4, n_cats=4)


def test_validation_rejects_k_below_two_and_bad_lengths() -> None:
    q, r, lengths = _tensors()
    with pytest.raises(ValueError, match="n_cats=1"):
        validate_sequences(q, torch.zeros_like(r), lengths, n_questions=4, n_cats=1)
    with pytest.raises(ValueError, match="sequence 1 has length 0"):
        validate_sequences(q, r, torch.tensor([3, 0]), n_questions=4, n_cats=4)


def test_collate_right_pads_with_zero() -> None:
    q, r, lengths = _tensors()
    ds = ResponseSequences(q, r, lengths, n_questions=4, n_cats=4)
    batch = collate_padded([ds[1], ds[0]])
    assert torch.equal(batch["questions"], torch.tensor([[4, 0, 0], [1, 2, 3]]))
    assert torch.equal(batch["responses"], torch.tensor([[2, 0, 0], [0, 3, 1]]))
    assert len(ds) == 2 and ds[1][0].tolist() == [4]


def test_split_datasets_follow_the_indices() -> None:
    data = generate_synthetic_oc(SPEC)
    train, held_out = split_datasets(data, SPEC.n_questions, SPEC.n_cats)
    assert len(train) == 40 and len(held_out) == 10
    first = int(data["eval_idx"][0])
    q, r = held_out[0]
    assert len(q) == data["lengths"][first]
    assert q.tolist() == data["questions"][first, :len(q)].tolist()
    assert r.tolist() == data["responses"][first, :len(q)].tolist()


def test_gpcm_logits_by_hand() -> None:
    """logit_k = sum over h < k of alpha (theta - b_h): theta 1, alpha 2, thresholds (0, 1, 3) -> 0, 2, 2, -2."""
    got = gpcm_logits(np.array(1.0), np.array(2.0), np.array([0.0, 1.0, 3.0]))
    np.testing.assert_allclose(got, [0.0, 2.0, 2.0, -2.0])


def test_oracle_is_the_generating_models_most_probable_category() -> None:
    """`oracle` is the argmax of the probabilities the responses were drawn from (the generator's first draws), and
    its accuracy on the drawn responses is the mean of those maximal probabilities, within sampling error."""
    spec = dataclasses.replace(SPEC, n_students=400, min_seq_len=50, max_seq_len=60)
    data = generate_synthetic_oc(spec)
    theta, alpha, thresholds = draw_parameters(np.random.default_rng(spec.seed), spec)
    valid = data["questions"] != 0
    item = data["questions"][valid] - 1
    student = np.nonzero(valid)[0]
    logits = gpcm_logits(theta[student], alpha[item], thresholds[item])  # (n, K)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_array_equal(data["oracle"][valid], probs.argmax(-1))
    assert (data["oracle"][~valid] == 0).all()
    hits = data["oracle"][valid] == data["responses"][valid]
    expected = probs.max(-1)
    se = np.sqrt((expected * (1 - expected)).sum()) / len(expected)
    assert abs(hits.mean() - expected.mean()) < 4 * se, (hits.mean(), expected.mean(), se)
    assert hits.mean() > np.bincount(data["responses"][valid]).max() / valid.sum()  # beats the majority class
