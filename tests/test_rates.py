"""Raw totals in every record, and one function that derives every rate from them."""

from __future__ import annotations

import dataclasses
import math

import pytest

from harness import distributed
from harness.rates import TOTAL_KEYS, rates, samples_per_step, totals_from_metrics
from harness.results import METRICS, Record

KNOWN = {"measured_steps": 40, "micro_steps": 80, "samples": 640, "real_tokens": 20_000, "padded_tokens": 25_600,
         "window_s": 2.0, "flops": 4e12}


def test_rates_on_known_totals() -> None:
    r = rates(KNOWN)
    assert set(r) <= set(METRICS)
    assert r == {"measured_steps": 40, "train_wall_s": 2.0, "steps_per_s": 20.0, "it_per_s": 40.0,
                 "samples_per_s": 320.0, "tokens_per_s": 10_000.0, "padded_tokens_per_s": 12_800.0,
                 "real_tokens_per_step": 500.0, "padded_tokens_per_step": 640.0, "achieved_tflops": 2.0}
    assert samples_per_step(KNOWN) == 16.0


def test_no_tokens_no_window_no_flops_give_none_not_zero() -> None:
    r = rates({**KNOWN, "real_tokens": 0, "padded_tokens": 0, "flops": None})
    assert r["tokens_per_s"] is None and r["real_tokens_per_step"] is None and r["achieved_tflops"] is None
    empty = rates({**KNOWN, "window_s": 0.0})
    assert empty["samples_per_s"] is None and empty["steps_per_s"] is None
    assert math.isnan(samples_per_step({}))


def test_an_older_records_totals_are_recovered_from_its_rates() -> None:
    assert totals_from_metrics(rates(KNOWN)) == pytest.approx(KNOWN)
    old = Record(experiment="e", variant="v", phase="speed", repeat=0, workload="w", preset="p", seed=0, config={},
                 status="ok", metrics=rates(KNOWN))
    assert old.window_totals == pytest.approx(KNOWN)
    new = dataclasses.replace(old, totals={**KNOWN, "samples": 641})  # kept totals win over the recovery
    assert new.window_totals["samples"] == 641


def test_a_run_records_totals_and_its_rates_are_rates_of_them() -> None:
    from harness.engine import run
    from harness.registry import resolve

    res = run(resolve("lm", {"preset": "tiny", "bench_steps": 6, "bench_warmup_steps": 2}))
    assert set(res.totals) == set(TOTAL_KEYS) and res.totals["measured_steps"] == 6
    assert res.totals["samples"] == 6 * res.metrics["samples_per_step"]
    assert res.totals["real_tokens"] > 0 and res.totals["padded_tokens"] >= res.totals["real_tokens"]
    for k, v in rates(res.totals).items():
        assert res.metrics[k] == pytest.approx(v), k


def _rank(samples: int, window: float, steps: int, flops: float) -> dict:
    totals = {"measured_steps": steps, "micro_steps": 2 * steps, "samples": samples, "real_tokens": 10 * samples,
              "padded_tokens": 12 * samples, "window_s": window, "flops": flops}
    return {"status": "ok", "env": {}, "step_ms": [window * 1e3 / steps] * steps, "phase_ms": {"communication": 1.0},
            "metrics": {**rates(totals), "peak_rss_gib": 1.0, "final_loss": 0.5}, "totals": totals}


def test_gather_adds_the_ranks_totals_and_divides_by_the_slowest_window() -> None:
    out = distributed.gather([_rank(33, 0.5, 4, 1e9), _rank(31, 0.6, 4, 2e9)], ["", ""])
    assert out["totals"] == {"measured_steps": 4, "micro_steps": 8, "samples": 64, "real_tokens": 640,
                             "padded_tokens": 768, "window_s": 0.6, "flops": 3e9}
    m = out["metrics"]
    assert m["samples_per_s"] == pytest.approx(64 / 0.6) and m["it_per_s"] == pytest.approx(8 / 0.6)
    assert m["tokens_per_s"] == pytest.approx(640 / 0.6) and m["achieved_tflops"] == pytest.approx(3e9 / 0.6 / 1e12)
    assert [r["samples"] for r in out["ranks"]] == [33, 31]  # the ranks' own counts, not recovered from rates


def test_group_members_mark_what_the_process_shared() -> None:
    from harness.engine import PROCESS_METRICS, SAMPLED_METRICS, run_group
    from harness.registry import resolve

    base = resolve("lm", {"preset": "tiny", "bench_steps": 4, "bench_warmup_steps": 1})
    first, second = run_group([base, base.replace(seed=1)], rounds=4, warmup_rounds=1)
    assert "peak_rss_gib" in first.pairing["shared"] and "peak_rss_gib" in second.pairing["shared"]
    assert "cpu_util_pct" in first.pairing["shared"]  # member 0's sampler saw both members' work
    assert not set(second.pairing["shared"]) & set(SAMPLED_METRICS)  # member 1 has no sampler of its own
    assert set(first.pairing["shared"]) <= set(SAMPLED_METRICS + PROCESS_METRICS)


def test_compare_leaves_out_what_a_group_shared(tmp_path) -> None:
    from harness.analysis.compare import compare
    from tests.fixtures.synthetic import speed_record, write

    def recs(rss: float, shared: bool) -> list[Record]:
        out = []
        for r in range(3):
            rec = speed_record("a", r, peak_rss_gib=rss)
            out.append(dataclasses.replace(rec, pairing={"shared": ["peak_rss_gib"]} if shared else {}))
        return out

    text, _ = compare(write(tmp_path / "old", recs(1.0, False)), write(tmp_path / "new", recs(2.0, True)), [])
    assert "| a | peak_rss_gib |" not in text and "| a | samples_per_s |" in text
