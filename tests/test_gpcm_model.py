"""Deep-GPCM model: the three forward modes compute one function; the scan's hand-written backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.gpcm.model import FORWARD_MODES, DeepGPCM, gpcm_log_probs, linear_decay_weights
from models.gpcm.scan import memory_scan

SIZES = dict(n_questions=7, n_cats=4, memory_size=3, key_dim=5, value_dim=6, summary_dim=4, ability_scale=1.5)
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

def _build(mode: str, dtype: torch.dtype, chunk: int = 3) -> DeepGPCM:
    torch.manual_seed(0)
    return DeepGPCM(**SIZES, forward_mode=mode, scan_chunk_len=chunk).to(dtype)


def _random_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random questions (1..Q) and responses (0..K-1) with the given lengths."""
    g = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    q = torch.randint(1, SIZES["n_questions"] + 1, (len(lengths), steps), generator=g)
    r = torch.randint(0, SIZES["n_cats"], (len(lengths), steps), generator=g)
    pad = torch.arange(steps) >= torch.tensor(lengths).unsqueeze(1)
    return q.masked_fill(pad, 0), r.masked_fill(pad, 0)


def _run(model: DeepGPCM, q: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    out = model(q, r)
    valid = q != 0
    nll = -out["log_probs"].gather(-1, r.unsqueeze(-1)).squeeze(-1)[valid].sum()
    nll.backward()
    # None = the parameter took no part (erase/add when no write is ever read, T = 1)
    return out["log_probs"].exp().detach(), {n: p.grad for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Scale-free error max|a - ref| / max|ref|, as the harness's equivalence check."""
    a, ref = a.detach(), ref.detach()
    scale = float(ref.abs().max())
    diff = float((a - ref).abs().max())
    return diff / scale if scale > 0 else diff


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lengths", [[9, 1, 4, 9, 2], [1, 1, 1], [5, 3]])
def test_modes_compute_the_same_probabilities_and_gradients(dtype: torch.dtype, lengths: list[int]) -> None:
    q, r = _random_batch(lengths)
    probs_ref, grads_ref = _run(_build("sequential", dtype), q, r)
    assert torch.allclose(probs_ref.sum(-1), torch.ones((), dtype=dtype))
    for mode in ("parallel", "scan"):
        probs, grads = _run(_build(mode, dtype), q, r)
        assert grads.keys() == grads_ref.keys()
        assert _rel(probs, probs_ref) <= TOLERANCE[dtype], mode
        for name, g in grads_ref.items():
            assert (grads[name] is None) == (g is None), (mode, name)
            assert g is None or _rel(grads[name], g) <= TOLERANCE[dtype], (mode, name)
    # the gradients are not trivially zero; only a batch of length 1 leaves the write unused
    unused = {n for n, g in grads_ref.items() if g is None}
    write_only = {f"{m}.{p}" for m in ("value_embed", "erase", "add") for p in ("weight", "bias")}
    assert unused == (write_only if max(lengths) == 1 else set())
    assert all(float(g.abs().max()) > 0 for g in grads_ref.values() if g is not None)


def test_modes_share_parameter_names_and_initialisation() -> None:
    params = {mode: dict(_build(mode, torch.float32).named_parameters()) for mode in FORWARD_MODES}
    for mode in ("parallel", "scan"):
        assert params[mode].keys() == params["sequential"].keys()
        for name, p in params["sequential"].items():
            assert torch.equal(params[mode][name], p), name
    assert torch.count_nonzero(params["scan"]["key_embed.weight"][0]) == 0  # padding row


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_memory_scan_backward_passes_gradcheck(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    batch, steps, slots, dim = 2, 7, 3, 4
    w = torch.softmax(torch.randn(batch, steps, slots, generator=g, dtype=torch.float64), -1).requires_grad_()
    e = torch.rand(batch, steps, dim, generator=g, dtype=torch.float64).requires_grad_()
    a = torch.randn(batch, steps, dim, generator=g, dtype=torch.float64).tanh().requires_grad_()
    m0 = torch.randn(slots, dim, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *x: memory_scan(*x, chunk_len=chunk), (w, e, a, m0))


def _reference_reads(w: torch.Tensor, e: torch.Tensor, a: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
    memory, reads = m0.expand(w.shape[0], -1, -1), []
    for t in range(w.shape[1]):
        reads.append(DeepGPCM.read(memory, w[:, t]))
        memory = DeepGPCM.write(memory, w[:, t], e[:, t], a[:, t])
    return torch.stack(reads, 1)


def test_memory_scan_is_stable_when_a_slot_decays_to_underflow() -> None:
    # Slot 0 takes w ~ 1 and e ~ 1 every step: its content shrinks by ~1e-3 per step and reaches
    # float32's underflow long before step 400. A scan that divided by prefix products would give inf/nan.
    steps, slots, dim = 400, 3, 4
    w = torch.tensor([0.999, 0.0005, 0.0005]).expand(2, steps, slots).contiguous().requires_grad_()
    e = torch.full((2, steps, dim), 0.999, requires_grad=True)
    a = torch.full((2, steps, dim), 1e-30, requires_grad=True)
    m0 = torch.ones(slots, dim, requires_grad=True)
    reads = memory_scan(w, e, a, m0)
    ref = _reference_reads(w, e, a, m0)
    assert torch.isfinite(reads).all()
    assert _rel(reads, ref) <= 1e-5
    grads = torch.autograd.grad(reads.sum(), (w, e, a, m0))
    grads_ref = torch.autograd.grad(ref.sum(), (w, e, a, m0))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert torch.isfinite(g).all() and _rel(g, g_ref) <= 1e-5


def test_value_embedding_equals_the_dense_linear_decay_one_hot() -> None:
    model = _build("scan", torch.float64)
    q, r = _random_batch([6, 2, 4])
    n_q, k = SIZES["n_questions"], SIZES["n_cats"]
    dense = torch.zeros(*q.shape, k * n_q, dtype=torch.float64)  # x_t as the public code builds it
    for idx in torch.nonzero(q):
        b, t = idx.tolist()
        for cat in range(k):
            dense[b, t, cat * n_q + q[b, t] - 1] = max(0.0, 1 - abs(cat - int(r[b, t])) / (k - 1))
    expected = F.linear(dense, model.value_embed.weight, model.value_embed.bias)
    assert torch.allclose(model.value(q, r), expected, atol=1e-12)


def test_linear_decay_weights_by_hand() -> None:
    got = linear_decay_weights(torch.tensor([0, 1, 3]), 4, torch.float64)
    expected = torch.tensor([[1, 2 / 3, 1 / 3, 0], [2 / 3, 1, 2 / 3, 1 / 3], [0, 1 / 3, 2 / 3, 1]],
                            dtype=torch.float64)
    assert torch.allclose(got, expected)


def test_gpcm_probabilities_by_hand() -> None:
    # theta=1, alpha=2, beta=(0, 1, 2): cumulative logits 0, 2, 2+0, 2+0-2 = (0, 2, 2, 0)
    log_p = gpcm_log_probs(torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64),
                           torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    z = 2 + 2 * math.exp(2)
    assert torch.allclose(log_p.exp(), torch.tensor([1 / z, math.exp(2) / z, math.exp(2) / z, 1 / z],
                                                    dtype=torch.float64))
    # huge discrimination: a naive softmax of exp(logits) overflows, the log-softmax does not
    extreme = gpcm_log_probs(torch.tensor([50.0]), torch.tensor([1e4]), torch.tensor([[-1.0, 0.0, 1.0]]))
    assert torch.isfinite(extreme).all() and torch.allclose(extreme.exp().sum(-1), torch.ones(1))


def test_bad_model_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="forward_mode='fast'.*sequential | parallel | scan"):
        DeepGPCM(**SIZES | {"n_cats": 4}, forward_mode="fast")
    with pytest.raises(ValueError, match="n_cats=1"):
        DeepGPCM(**SIZES | {"n_cats": 1})


def test_one_root_call_per_forward_in_every_mode() -> None:
    q, r = _random_batch([5, 3])
    for mode in FORWARD_MODES:
        model, calls = _build(mode, torch.float32), []
        model.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        model(q, r)
        assert len(calls) == 1, mode


def test_scan_under_bf16_autocast_stays_close_to_float32() -> None:
    q, r = _random_batch([9, 4])
    model = _build("scan", torch.float32)
    with torch.no_grad():
        ref = model(q, r)["log_probs"].exp()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(q, r)["log_probs"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float((out.exp() - ref).abs().max()) < 0.05
