"""The `train_bench` fixture end to end, in pytest sessions of its own (pytester).

What pytest-benchmark carries (--benchmark-json extra_info), a gate failing the test with its
message, and that the plugin costs nothing in a session that does not use it; then, on the fixture
object directly, the refusal under pytest-xdist and --benchmark-disable.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from harness.pytest_plugin import TrainBench

pytest_plugins = ["pytester"]
# Sessions run in subprocesses: pytester's in-process runs drop the modules first imported inside
# them, and torch does not survive being imported twice in one process.

A_A_AND_COUNTERS = """
def test_step(train_bench):
    result = train_bench("lm", preset="tiny", device="cpu", bench_steps=6)
    train_bench.expect(result, forward_calls_per_step=1, flops_per_step=result.reference_flops_per_step)
    assert result.timed_steps == 6 and result.torch_threads == 1

def test_unchanged(train_bench):
    train_bench.compare("lm", baseline={}, variant={}, min_speedup=0.9, preset="tiny", device="cpu")
"""

PLANTED = """
def test_duplicate_forward(train_bench):
    counters = train_bench.counters("lm", preset="tiny", device="cpu", duplicate_forward=True)
    train_bench.expect(counters, forward_calls_per_step=1)

def test_lost_speedup(train_bench):
    # per_sequence is ~3x slower than batched: asking it to be 2x *faster* must fail.
    train_bench.compare("lm", baseline={"forward": "batched"}, variant={"forward": "per_sequence"},
                        min_speedup=2.0, pairs=10, preset="tiny", device="cpu")
"""


@pytest.mark.slow
def test_figures_ratios_and_failing_gates(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixture=A_A_AND_COUNTERS, test_planted=PLANTED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-json=out.json")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*counter gate failed: lm preset=tiny device=cpu threads=1 duplicate_forward=True: "
        "forward_calls_per_step = 2.0 (expected 1)*duplicate forward*",
        "*ratio gate failed: lm forward=per_sequence vs forward=batched: speedup below 2: x0.*required >= 2x*"
        "whole-interval rule*knobs changed: forward batched -> per_sequence*",
    ])
    assert "Benchmark fixture was not used" not in result.stdout.str()
    benchmarks = {b["name"]: b for b in json.loads((pytester.path / "out.json").read_text())["benchmarks"]}
    step = benchmarks["test_step"]["extra_info"]
    assert step["forward_calls_per_step"] == 1 and step["flops_per_step"] == step["reference_flops_per_step"] > 0
    assert step["samples_per_s"] > 0 and step["tokens_per_s"] > 0 and step["peak_rss_gib"] > 0
    assert step["config"]["workload"] == "lm" and step["config"]["preset"] == "tiny"
    assert benchmarks["test_step"]["stats"]["rounds"] == 6
    ratio = benchmarks["test_unchanged"]["extra_info"]
    assert ratio["pairs"] == 30 and ratio["clock"] == "cpu" and ratio["speedup_ci_high"] >= 0.9
    assert ratio["changed"] == {} and ratio["min_speedup"] == 0.9
    assert benchmarks["test_lost_speedup"]["extra_info"]["speedup_ci_high"] < 2.0  # recorded, then failed


def test_refuses_to_time_under_xdist(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # what an xdist worker sees
    bench = TrainBench(None, request.config)
    for timed in (lambda: bench("lm", preset="tiny"),
                  lambda: bench.compare("lm", baseline={}, variant={}, min_speedup=0.9, preset="tiny")):
        with pytest.raises(pytest.skip.Exception, match="refuses to time under pytest-xdist.*-n 0"):
            timed()


def test_benchmark_disable_runs_both_configs_but_does_not_decide(request: pytest.FixtureRequest) -> None:
    disabled = SimpleNamespace(disabled=True, _mode=None, extra_info={})  # pytest-benchmark's state under the flag
    bench = TrainBench(disabled, request.config)
    with pytest.raises(pytest.skip.Exception, match="ratio gate not decided: benchmarks are disabled"):
        bench.compare("lm", baseline={}, variant={"forward": "per_sequence"}, min_speedup=100.0, preset="tiny",
                      device="cpu")
    assert disabled.extra_info == {}


def test_plugin_costs_nothing_when_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="""
import sys

def test_plain(request):
    assert request.config.pluginmanager.has_plugin("trainbench")  # loaded through the pytest11 entry point
    assert "torch" not in sys.modules and "harness.trainer" not in sys.modules
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1)
