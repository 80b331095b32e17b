"""`trainbench fit`: the search equals a scan, and on real runs (a toy whose memory grows by a known
amount per sample) its answer equals a brute-force scan of every batch size."""

from __future__ import annotations

import itertools

import pytest

from harness.fit import Probe, answer_of, search


@pytest.mark.parametrize("start, limit, threshold", list(itertools.product([1, 3, 8, 64], [1, 7, 64, 100],
                                                                             [0, 1, 5, 8, 63, 64, 100])))
def test_search_finds_what_a_scan_finds_in_few_probes(start: int, limit: int, threshold: int) -> None:
    calls: list[int] = []

    def probe(v: int) -> Probe:
        calls.append(v)
        return Probe(v, v <= threshold, float(v), "ok" if v <= threshold else "peak above the budget")

    probes = search(probe, start, limit)
    scan = max((v for v in range(1, limit + 1) if v <= threshold), default=None)
    assert answer_of(probes) == scan
    assert len(calls) == len(set(calls))  # never probes a value twice
    assert len(calls) <= 2 * max(limit, 2).bit_length() + 2


@pytest.mark.slow
def test_fit_on_real_runs_equals_a_brute_force_scan(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main
    from harness.fit import fit

    knobs = {"mib_per_sample": 16, "n_samples": 64, "threads": 1}
    wl = "tests.toy:WORKLOAD"
    one = fit(wl, knobs, 100.0, knob="batch_size")  # everything fits: the probes measure the memory line
    assert one.answer == 64 and one.slope_gib is not None
    # a budget half way between two batch sizes' peaks (16 MiB apart): run-to-run RSS noise is far smaller
    budget = one.need_gib(9) + 8 / 1024
    res = fit(wl, knobs, budget, knob="batch_size")
    brute = _scan(wl, knobs, range(1, 17), budget)  # every batch size, each in a fresh process
    assert res.answer == max(p.value for p in brute if p.fits) == 9
    assert main(["fit", wl, "mib_per_sample=16", "n_samples=64", "threads=1", "--memory", f"{budget:.4f}"]) == 0
    out = capsys.readouterr().out
    assert "largest batch_size within" in out and ": 9, after" in out and "would need" in out


def _scan(wl: str, knobs: dict, values: range, budget: float) -> list[Probe]:
    """Every value probed as `fit` probes it (same fork server kind, fresh process each)."""
    import tempfile
    from pathlib import Path

    from harness.experiment import build
    from harness.fit import run_probe
    from harness.launch import default_launcher

    launcher = default_launcher(build("fit", wl, knobs, {}, equivalence=False))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return [run_probe(knobs, wl, "batch_size", v, budget, Path(tmp), launcher, 120.0) for v in values]
    finally:
        launcher.close()


@pytest.mark.slow
def test_fit_on_a_cpu_needs_a_budget(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    assert main(["fit", "lm", "preset=tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit on a CPU needs --memory GiB" in err[0]
    assert main(["fit", "lm", "preset=tiny", "--memory", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing fits in 0.01 GiB (peak RSS): even batch_size=1 ")
    assert "raise --memory" in err[0]
    assert main(["fit", "lm", "preset=tiny", "--memory", "1", "--knob", "lr"]) == 2
    assert "fit searches an integer knob" in capsys.readouterr().err
