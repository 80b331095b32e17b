"""The `train_bench` pytest fixture (on top of pytest-benchmark) and CI gates that hold on a shared runner.

    def test_scan(train_bench):
        result = train_bench("gpcm", forward="scan", preset="tiny")        # timed by pytest-benchmark
        train_bench.expect(result, forward_calls_per_step=1, flops_per_step=result.reference_flops_per_step)
        train_bench.compare("gpcm", baseline={"forward": "sequential"}, variant={"forward": "scan"},
                            min_speedup=1.5, preset="tiny")                  # ratio gate, same session

Absolute step times drift on a shared runner, so besides pytest-benchmark's figures (which go to
`--benchmark-json` / `--benchmark-autosave` with the counters and the config in `extra_info`) the
fixture gates on what does not drift:

- ratios measured side by side: both trainers are built and warmed up, then their optimizer steps
  alternate A B, B A, A B, ... (so drift and bursts of load hit both); the speedup is the geometric
  mean of the per-pair ratios with a bootstrap CI (`harness.analysis.stats`), on this process's CPU
  time when everything runs here on a CPU, else on wall time (`pick_clock`). The gate fails only when
  the whole 95% interval is below the required speedup (`ratio_verdict`);
- counters: forward calls per micro-step, FLOPs per step against a plain one-forward-one-backward
  reference on the same batches, parameter count; `expect` compares them exactly;
- the function computed: the one-step equivalence check and the training loss after N steps at a
  fixed seed, for knobs that must not change what is computed.

Everything runs with one torch thread unless `--trainbench-threads` says otherwise (two threads on
two shared cores made A/A ratios swing 0.6-1.7x); a config's own `threads` knob, applied when its
trainer is built, wins. Timing is refused under pytest-xdist, as
pytest-benchmark does. The module imports nothing heavy at load time: the plugin is active in every
pytest session of an environment with trainbench installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.analysis.speedup import Comparison
    from harness.config import RunConfig
    from harness.engine import StepCounters
    from harness.trainer import Trainer

DEFAULT_PAIRS = 30
"""Interleaved step pairs per ratio gate (the bootstrap CI is over pairs)."""
DEFAULT_WARMUP_PAIRS = 3
XDIST_REFUSAL = ("trainbench refuses to time under pytest-xdist: parallel workers share the cores, so step "
                 "times and ratios would measure the other workers; run the benchmarks with -n 0 (or -p no:xdist)")


# --- pytest hooks -------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("trainbench")
    group.addoption("--trainbench-threads", type=int, default=1, metavar="N",
                    help="torch intra-op threads while train_bench times steps (default 1: on a shared runner more "
                         "threads spin against other jobs and make step times erratic; 0 leaves torch's setting)")
    group.addoption("--trainbench-against", metavar="REF", nargs="?", const="auto", default=None,
                    help="old-against-new gates: measure this working tree's code against revision REF (default: "
                         "the merge base with main), old and new interleaved in fresh processes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gate: a fast trainbench gate that CI runs (`pytest bench -m gate`)")


def _against_base(config: pytest.Config) -> tuple[Any, Any]:
    """(Base, exported root) of --trainbench-against, exported once per session; (None, reason) when off."""
    from harness import against

    ref = config.getoption("trainbench_against", None)
    if ref is None:
        return None, "old-against-new gate off: pass --trainbench-against REF (e.g. main) to measure against REF"
    cached = getattr(config, "_trainbench_against", None)
    if cached is None:
        base = against.resolve_base(ref, config.rootpath)
        if not base.changed:
            cached = (None, f"no code change against {base.short} ({base.ref}): nothing to compare")
        else:
            stack = contextlib.ExitStack()
            root = stack.enter_context(against.exported(base, config.rootpath))
            config.add_cleanup(stack.close)
            against.check_imports_from(root)
            cached = (base, root)
        config._trainbench_against = cached  # noqa: SLF001 (a per-session cache on the config)
    return cached


def xdist_active(config: pytest.Config) -> bool:
    """True in an xdist controller with -n > 0 or in an xdist worker (pytest-benchmark's test)."""
    return config.getoption("dist", "no") != "no" or bool(os.environ.get("PYTEST_XDIST_WORKER"))


# --- faces of the engine -------------------------------------------------------------------------------
# Nothing here measures or decides: configs go to the engine (`harness.engine`, through the runner's
# paired mode), records come back, and `harness.analysis.gates` gives the verdict.


def measure_counters(cfg: RunConfig) -> StepCounters:
    """Counters of the second optimizer step of a fresh trainer for `cfg` (`harness.engine.step_counters`)."""
    from harness.engine import config_label, step_counters

    return step_counters(cfg, config_label(cfg))


def pick_clock(clock: str, *cfgs: RunConfig) -> str:
    """The clock a ratio gate on these configs uses (`harness.analysis.speedup.pick_clock`)."""
    from harness.analysis.speedup import pick_clock as pick
    from harness.config import resolve_device

    return pick(clock, [{**c.to_dict(), "device": resolve_device(c).type} for c in cfgs])


def measure_speedup(baseline: RunConfig | Trainer, variant: RunConfig | Trainer, *, pairs: int = DEFAULT_PAIRS,
                    warmup_pairs: int = DEFAULT_WARMUP_PAIRS, clock: str = "auto",
                    run_rounds: RoundRunner | None = None, label: str = "") -> Comparison:
    """Interleave the two configs' steps in this process (the runner's paired mode) and compare them.

    A prepared `Trainer` may stand for a config (a planted regression patched into its loader).
    """
    from harness.analysis.speedup import compare
    from harness.jobs import run_group_here

    if pairs < 2:
        raise ValueError(f"pairs: bad value {pairs}; a confidence interval needs at least 2 pairs (use >= 20)")
    cfgs = [x.cfg if hasattr(x, "cfg") else x for x in (baseline, variant)]
    chosen = pick_clock(clock, *cfgs)
    records = run_group_here("pytest", {"baseline": baseline, "variant": variant}, rounds=pairs,
                             warmup_rounds=warmup_pairs, run_rounds=run_rounds)
    return compare([records[0]], [records[1]], clock=chosen, label=label)


def loss_after_steps(cfg: RunConfig, steps: int) -> float:
    """Mean training loss over the first `steps` optimizer steps (2-10) at the config's seed."""
    from harness.engine import run

    if not 2 <= steps <= 10:
        raise ValueError(f"steps: bad value {steps}; use 2-10 (the trainer's final_loss averages the last 10 steps)")
    # A speed run of 1 warmup + (steps - 1) measured steps; final_loss averages all of them.
    run_cfg = cfg.replace(epochs=0, bench_warmup_steps=1, bench_steps=steps - 1)
    return float(run(run_cfg).metrics["final_loss"])


def _label(cfg: RunConfig, changed: Mapping[str, tuple[Any, Any]]) -> str:
    if not changed:
        return f"{cfg.workload} (identical configs)"
    variant = ", ".join(f"{k}={v[1]}" for k, v in changed.items())
    baseline = ", ".join(f"{k}={v[0]}" for k, v in changed.items())
    return f"{cfg.workload} {variant} vs {baseline}"


def equivalence_verdict(base: RunConfig, variant: RunConfig, steps: int = 1) -> tuple[bool, str]:
    """(passed, message) of the equivalence check of two configs over `steps` optimizer steps
    (`harness.analysis.gates`)."""
    from harness.analysis import gates
    from harness.equivalence import check_equivalence

    changed = base.diff(variant)
    return gates.equivalence_verdict(_label(base, changed), changed, check_equivalence(base, variant, steps=steps))


def loss_verdict(base: RunConfig, variant: RunConfig, steps: int, rel_tol: float) -> tuple[bool, str]:
    """(passed, message): both configs reach the same training loss after `steps` steps at a fixed seed."""
    from harness.analysis import gates

    return gates.loss_verdict(_label(base, base.diff(variant)), loss_after_steps(base, steps),
                              loss_after_steps(variant, steps), steps, rel_tol)


def ratio_verdict(c: Comparison, min_speedup: float) -> tuple[bool, str]:
    """`harness.analysis.gates.ratio_verdict`: the whole-interval rule every ratio gate uses."""
    from harness.analysis import gates

    return gates.ratio_verdict(c, min_speedup)


def counter_verdict(name: str, measured: Any, expected: Mapping[str, float]) -> tuple[bool, str]:
    """`harness.analysis.gates.counter_verdict`."""
    from harness.analysis import gates

    return gates.counter_verdict(name, measured, expected)


@dataclass(frozen=True, slots=True)
class StepBench:
    """What `train_bench(...)` measured: the step's counters, throughput over the timed rounds, memory, the
    config. The counters' fields read as the result's own (`result.flops_per_step`, `result.param_count`)."""

    counters: StepCounters
    """What one optimizer step does, from the engine (`harness.engine.step_counters`)."""
    config: dict[str, Any]
    forward_calls_per_step: float
    """Over the timed rounds when timed (else the counters' figure)."""
    timed_steps: int
    step_ms_median: float | None
    samples_per_s: float | None
    tokens_per_s: float | None
    peak_rss_gib: float | None
    """High-water mark of this process's RSS over the timed rounds (the engine's definition)."""
    cuda_peak_allocated_gib: float | None
    torch_threads: int

    def __getattr__(self, name: str) -> Any:
        if name == "counters":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.counters, name)

    def extra_info(self) -> dict[str, Any]:
        """The JSON-able figures pytest-benchmark stores with the timing (counters flattened in)."""
        own = asdict(self)
        return {**own.pop("counters"), **own}


RoundRunner = Callable[[Callable[[], None], int, int], None]
"""run(one_round, rounds, warmup_rounds): how the rounds are driven (a plain loop or benchmark.pedantic)."""


# --- the fixture ----------------------------------------------------------------------------------------


class TrainBench:
    """The `train_bench` fixture object: call it to benchmark one config; its methods are the gates."""

    def __init__(self, benchmark: Any, config: pytest.Config) -> None:
        self.benchmark = benchmark
        self.config = config
        self.threads: int = config.getoption("trainbench_threads", 1)

    def _resolve(self, workload: str, *layers: Mapping[str, Any]) -> RunConfig:
        from harness.registry import resolve

        # The session's thread setting (--trainbench-threads) unless the test sets the knob itself.
        threads = {"threads": self.threads} if self.threads else {}
        return resolve(workload, threads, *layers)

    def _refuse_if_unreliable(self) -> None:
        if xdist_active(self.config):
            pytest.skip(XDIST_REFUSAL)

    def _run_rounds(self) -> RoundRunner | None:
        # Route the rounds through pytest-benchmark while its fixture is unused in this test, so the
        # timing and extra_info land in --benchmark-json; a second timing in the same test uses a loop.
        if self.benchmark is None or self.benchmark._mode is not None:  # noqa: SLF001 (its "used" flag)
            return None

        def run(one_round: Callable[[], None], rounds: int, warmup_rounds: int) -> None:
            self.benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        return run

    def __call__(self, workload: str, **knobs: Any) -> StepBench:
        """Benchmark one config's optimizer step with pytest-benchmark (bench_steps rounds after
        bench_warmup_steps warmup steps) and return its figures, also stored in `benchmark.extra_info`."""
        from harness.jobs import run_group_here

        self._refuse_if_unreliable()
        cfg = self._resolve(workload, knobs)
        counters = measure_counters(cfg)
        runner = self._run_rounds()
        (record,) = run_group_here("pytest", {"config": cfg}, rounds=cfg.bench_steps,
                                   warmup_rounds=cfg.bench_warmup_steps, run_rounds=runner)
        m = record.metrics
        timed = 0 if self.benchmark is None or self.benchmark.disabled else int(m.get("measured_steps") or 0)
        result = StepBench(
            counters=counters, config=cfg.to_dict(),
            forward_calls_per_step=m["forward_calls_per_step"] if timed else counters.forward_calls_per_step,
            timed_steps=timed,
            step_ms_median=m.get("step_ms_median") if timed else None,
            samples_per_s=m.get("samples_per_s") if timed else None,
            tokens_per_s=m.get("tokens_per_s") if timed else None, peak_rss_gib=m.get("peak_rss_gib"),
            cuda_peak_allocated_gib=m.get("cuda_peak_allocated_gib"), torch_threads=int(m["torch_threads"]))
        if self.benchmark is not None:
            self.benchmark.extra_info.update(result.extra_info())
        return result

    def counters(self, workload: str, **knobs: Any) -> StepCounters:
        """Counters of one optimizer step (untimed: valid anywhere, xdist included)."""
        return measure_counters(self._resolve(workload, knobs))

    def expect(self, measured: StepCounters | StepBench, *, name: str = "", **expected: float) -> None:
        """Counter gate: every named counter equals its expected value exactly, or the test fails."""
        passed, message = counter_verdict(name or measured.label, measured, expected)
        if not passed:
            pytest.fail(message, pytrace=False)

    def expect_above(self, measured: StepCounters | StepBench, counter: str, than: float, *, why: str,
                     name: str = "") -> None:
        """Counter gate: `measured.<counter>` must exceed `than`; `why` says what it means when it does not."""
        from harness.analysis import gates

        passed, message = gates.counter_above_verdict(name or measured.label, measured, counter, than, why)
        if not passed:
            pytest.fail(message, pytrace=False)

    def compare(self, workload: str, *, baseline: Mapping[str, Any], variant: Mapping[str, Any],
                min_speedup: float, pairs: int = DEFAULT_PAIRS, warmup_pairs: int = DEFAULT_WARMUP_PAIRS,
                clock: str = "auto", **common: Any) -> Comparison:
        """Ratio gate: the variant's step must be at least `min_speedup` x faster than the baseline's.

        `common` knobs (e.g. preset="tiny") apply to both. `clock`: see `pick_clock`. Fails the test with
        the measured ratio, its 95% CI and where the time went; skips (saying why) when benchmarks are disabled.
        """
        self._refuse_if_unreliable()
        base_cfg = self._resolve(workload, common, baseline)
        variant_cfg = self._resolve(workload, common, variant)
        if self.benchmark is not None and self.benchmark.disabled:
            measure_speedup(base_cfg, variant_cfg, pairs=2, warmup_pairs=0)  # both configs still run: a smoke test
            pytest.skip("ratio gate not decided: benchmarks are disabled (--benchmark-disable)")
        result = measure_speedup(base_cfg, variant_cfg, pairs=pairs, warmup_pairs=warmup_pairs, clock=clock,
                                 run_rounds=self._run_rounds())
        if self.benchmark is not None:
            self.benchmark.extra_info.update({**result.extra_info(), "min_speedup": min_speedup})
        passed, message = ratio_verdict(result, min_speedup)
        if not passed:
            pytest.fail(message, pytrace=False)
        return result

    def equivalent(self, workload: str, *, baseline: Mapping[str, Any], variant: Mapping[str, Any],
                   steps: int = 1, **common: Any) -> None:
        """Equivalence gate: one step of both configs gives the same outputs, loss and gradients; with
        `steps` > 1 also the same loss at each of that many optimizer steps and the same parameters after."""
        from harness.machine import unavailable_for

        configs = self._resolve(workload, common, baseline), self._resolve(workload, common, variant)
        reason = unavailable_for(configs)
        if reason:
            pytest.skip(reason)  # the machine cannot compile: nothing to compare, not a failure
        passed, message = equivalence_verdict(*configs, steps)
        if not passed:
            pytest.fail(message, pytrace=False)

    def same_loss(self, workload: str, *, baseline: Mapping[str, Any], variant: Mapping[str, Any],
                  steps: int = 3, rel_tol: float = 1e-4, **common: Any) -> None:
        """Quality gate at a fixed seed: both configs reach the same training loss after `steps` steps."""
        passed, message = loss_verdict(self._resolve(workload, common, baseline),
                                       self._resolve(workload, common, variant), steps, rel_tol)
        if not passed:
            pytest.fail(message, pytrace=False)

    def against(self, workload: str, **knobs: Any) -> Any:
        """Old-against-new gate: this tree's code against `--trainbench-against REF`'s, same config, fresh
        processes alternating old/new; fails when new is resolved slower, naming where the time went.
        Skips (saying why) when the option is off or no code changed."""
        import tempfile

        from harness import against

        self._refuse_if_unreliable()
        base, root = _against_base(self.config)
        if base is None:
            pytest.skip(root)
        if not base.touches(workload):
            pytest.skip(f"no code of {workload} changed against {base.short} (changed: {', '.join(base.changed[:4])})")
        with tempfile.TemporaryDirectory(prefix="trainbench-against-") as tmp:
            result = against.against(workload, knobs, base, root, Path(tmp) / "results")
        if self.benchmark is not None and result.wall is not None:
            self.benchmark.extra_info.update({**result.wall.extra_info(), "against": base.sha})
        if not result.passed:
            pytest.fail(result.message, pytrace=False)
        return result

    def reference(self, workload: str) -> None:
        """Reference gate: the workload's loss after each of N steps, its quality and counters equal the
        stored ones (`bench/references/`, `harness.reference`) within the dtype's tolerance."""
        from harness import reference

        passed, message = reference.check(workload)
        if not passed:
            pytest.fail(message, pytrace=False)

    def _finish(self) -> None:
        # A test that only checked counters never used the benchmark fixture; tell pytest-benchmark it
        # was skipped on purpose rather than have it warn "Benchmark fixture was not used at all".
        if self.benchmark is not None and self.benchmark._mode is None:  # noqa: SLF001
            self.benchmark.skipped = True


class _ThreadSetting:
    """Set torch's intra-op threads for a block and restore them (0: leave them)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.saved: int | None = None

    def __enter__(self) -> int:
        import torch

        self.saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        return torch.get_num_threads()

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.saved)


@pytest.fixture
def train_bench(benchmark: Any, request: pytest.FixtureRequest) -> Iterator[TrainBench]:
    """Benchmark trainbench configs with pytest-benchmark and gate on ratios, counters and equivalence."""
    bench = TrainBench(benchmark, request.config)
    with _ThreadSetting(bench.threads):  # for the whole test: counting and equivalence runs too
        yield bench
    bench._finish()
