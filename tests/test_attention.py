"""The shared attention kernels (models.attention) and the probe that records SDPA's pick."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.probes.counters import AttentionKernels
from models.attention import attend, check_device, math_attention


def _qkv(t: int = 7, s: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, t, 8, generator=g), torch.randn(2, 3, s, 8, generator=g),
            torch.randn(2, 3, s, 8, generator=g))


@pytest.mark.parametrize("case", ["causal", "bool_mask", "float_mask", "cross"])
def test_math_matches_sdpa(case: str) -> None:
    q, k, v = _qkv(5, 9) if case == "cross" else _qkv()
    kw: dict = {}
    if case == "causal":
        kw["is_causal"] = True
    elif case == "bool_mask":
        kw["attn_mask"] = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
        kw["attn_mask"].fill_diagonal_(True)  # every query attends somewhere
    elif case == "float_mask":
        kw["attn_mask"] = torch.randn(2, 1, 7, 7)
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    assert torch.allclose(math_attention(q, k, v, **kw), ref, atol=1e-6)
    assert torch.allclose(attend(q, k, v, kernel="math", **kw), ref, atol=1e-6)


def test_math_is_causal() -> None:
    q, k, v = _qkv()
    v2 = v.clone()
    v2[:, :, -1] += 1.0  # the last position's value: no earlier query may see it
    out = math_attention(q, k, v, is_causal=True)
    assert torch.equal(math_attention(q, k, v2, is_causal=True)[:, :, :-1], out[:, :, :-1])
    assert not torch.equal(math_attention(q, k, v2, is_causal=True)[:, :, -1], out[:, :, -1])


def test_probe_records_the_kernel_sdpa_picked() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv())
    with AttentionKernels() as probe:
        attend(q, k, v, kernel="sdpa", is_causal=True).sum().backward()
    assert probe.kernels and all(not name.endswith("_backward") for name in probe.kernels)
    with AttentionKernels() as restricted:
        attend(q, k, v, kernel="flash", is_causal=True)
    assert restricted.kernels == {"flash_attention_for_cpu"}  # the CPU's flash kernel, and nothing else
    with AttentionKernels() as math:
        attend(q, k, v, kernel="math", is_causal=True)
    assert math.kernels == set()  # plain tensor ops: no SDPA kernel ran
    assert torch.allclose(attend(q, k, v, kernel="flash", is_causal=True),
                          attend(q, k, v, kernel="math", is_causal=True), atol=1e-5)


def test_cuda_only_kernel_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="knob 'attention': efficient is a CUDA kernel"):
        check_device("efficient", "cpu")
    check_device("flash", "cpu")
    check_device("efficient", "cuda")


def test_a_run_records_the_kernel_and_math_is_equivalent() -> None:
    from harness.engine import run
    from harness.equivalence import check_equivalence
    from harness.registry import resolve

    steps = {"preset": "tiny", "bench_warmup_steps": 2, "bench_steps": 2}
    assert run(resolve("lm", steps)).notes["attention_kernels"] == "flash_attention_for_cpu"
    assert "attention_kernels" not in run(resolve("lm", {**steps, "attention": "math"})).notes
    for workload in ("lm", "doctrans"):
        base = resolve(workload, {"preset": "tiny"})
        result = check_equivalence(base, resolve(workload, {"preset": "tiny", "attention": "math"}))
        assert result["passed"] is True, (workload, result)
