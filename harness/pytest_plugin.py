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

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.analysis.stats import RatioEstimate
    from harness.config import RunConfig
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gate: a fast trainbench gate that CI runs (`pytest bench -m gate`)")


def xdist_active(config: pytest.Config) -> bool:
    """True in an xdist controller with -n > 0 or in an xdist worker (pytest-benchmark's test)."""
    return config.getoption("dist", "no") != "no" or bool(os.environ.get("PYTEST_XDIST_WORKER"))


# --- measuring ----------------------------------------------------------------------------------------


class _TapLoader:
    """Wraps the trainer's DataLoader: time spent waiting for each batch, and the last batches taken."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.wait = {"wall": 0.0, "cpu": 0.0}  # seconds on each clock
        self.taken: list[Any] = []
        self.keep = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait["wall"] += time.perf_counter() - wall
            self.wait["cpu"] += time.process_time() - cpu
            if self.keep:
                self.taken.append(batch)
            yield batch


class _Side:
    """One trainer prepared for external timing: its stepper, a tapped loader, per-step records.

    Every step is timed on two clocks: wall (`perf_counter`) and this process's CPU time
    (`process_time`), which does not count the time other jobs held the cores.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.tap = _TapLoader(trainer.loader)
        trainer.loader = self.tap  # read by `stepper()` below; the tap only observes
        self.step = trainer.stepper()
        self.ms: dict[str, list[float]] = {"wall": [], "cpu": [], "data_wall": [], "data_cpu": []}
        self.samples: list[int] = []
        self.real_tokens: list[int] = []

    def timed_step(self, record: bool = True) -> None:
        """One optimizer step (the stepper drains the device before returning, so host clocks are valid)."""
        waited = dict(self.tap.wait)
        wall, cpu = time.perf_counter(), time.process_time()
        counts = self.step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if record:
            for clock, elapsed in (("wall", wall), ("cpu", cpu)):
                self.ms[clock].append(elapsed * 1e3)
                self.ms["data_" + clock].append((self.tap.wait[clock] - waited[clock]) * 1e3)
            self.samples.append(sum(c.samples for c in counts))
            self.real_tokens.append(sum(c.real_tokens for c in counts))


@dataclass(frozen=True, slots=True)
class StepCounters:
    """What one optimizer step does, independent of the machine's speed."""

    label: str
    """The config, e.g. ``lm preset=tiny duplicate_forward=True`` (knobs that differ from the preset)."""
    forward_calls_per_step: float
    """Root-module forward calls per micro-step (1 for a correct loop, as in the trainer's metric)."""
    flops_per_step: int
    """FLOPs of one optimizer step as the trainer runs it (torch's FLOP counter: matmul/conv/attention)."""
    reference_flops_per_step: int
    """FLOPs of exactly one forward + loss + backward per micro-batch of the same step, outside the trainer."""
    param_count: int
    samples_per_step: int
    real_tokens_per_step: int
    padded_tokens_per_step: int


def _plain_forward_backward_flops(side: _Side, host_batches: list[Any]) -> int:
    # The reference the trainer's step is held to: one forward and one backward per micro-batch.
    from harness.probes.counters import count_flops
    from harness.trainer import autocast

    tr = side.trainer
    batches = [tr.wl.to_device(b, tr.device) for b in host_batches]

    def forward_backward() -> None:
        for batch in batches:
            with autocast(tr.cfg, tr.device):
                loss = tr.wl.loss(tr.wl.forward(tr.handle, batch, tr.cfg), batch, tr.cfg).total.float()
            loss.backward()

    _, flops = count_flops(forward_backward)
    tr.opt.zero_grad(set_to_none=True)  # leave the trainer as its step left it
    return flops


def count_step(side: _Side) -> StepCounters:
    """Run one step under the FLOP and forward counters, then the plain reference on the same batches.

    A first, uncounted step comes before: work done once (a lazily built index, a cache) is not per-step work.
    """
    from harness.probes.counters import ForwardCounter, count_flops

    tr = side.trainer
    side.step()
    counter = ForwardCounter(tr.handle)
    side.tap.keep, side.tap.taken = True, []
    try:
        counts, flops = count_flops(side.step)
    finally:
        counter.remove()
        side.tap.keep = False
    host_batches, side.tap.taken = side.tap.taken, []
    return StepCounters(
        label=config_label(tr.cfg),
        forward_calls_per_step=counter.calls / tr.cfg.grad_accum,
        flops_per_step=flops,
        reference_flops_per_step=_plain_forward_backward_flops(side, host_batches),
        param_count=sum(p.numel() for p in tr.model.parameters()),
        samples_per_step=sum(c.samples for c in counts),
        real_tokens_per_step=sum(c.real_tokens for c in counts),
        padded_tokens_per_step=sum(c.padded_tokens for c in counts),
    )


def config_label(cfg: RunConfig) -> str:
    """``workload preset=P knob=value ...`` with the knobs that differ from the preset's values."""
    from harness.registry import resolve

    changed = resolve(cfg.workload, {"preset": cfg.preset}).diff(cfg)
    return " ".join([cfg.workload, f"preset={cfg.preset}", *(f"{k}={v}" for k, (_, v) in changed.items())])


def measure_counters(cfg: RunConfig) -> StepCounters:
    """Counters of the second optimizer step of a fresh trainer for `cfg` (its batches fixed by the seed)."""
    from harness.trainer import Trainer

    return count_step(_Side(Trainer(cfg)))


@dataclass(frozen=True, slots=True)
class StepBench:
    """What `train_bench(...)` measured: counters, throughput over the timed rounds, memory, the config."""

    label: str
    config: dict[str, Any]
    forward_calls_per_step: float
    flops_per_step: int
    reference_flops_per_step: int
    param_count: int
    samples_per_step: int
    real_tokens_per_step: int
    padded_tokens_per_step: int
    timed_steps: int
    step_ms_median: float | None
    samples_per_s: float | None
    tokens_per_s: float | None
    peak_rss_gib: float
    cuda_peak_allocated_gib: float | None
    torch_threads: int

    def extra_info(self) -> dict[str, Any]:
        """The JSON-able figures pytest-benchmark stores with the timing."""
        return asdict(self)


def _throughput(side: _Side) -> tuple[float | None, float | None, float | None]:
    wall_ms = side.ms["wall"]
    total_s = sum(wall_ms) / 1e3
    if not wall_ms or total_s <= 0:
        return None, None, None
    tokens = sum(side.real_tokens)
    return statistics.median(wall_ms), sum(side.samples) / total_s, (tokens / total_s if tokens else None)


# --- ratios -------------------------------------------------------------------------------------------


CLOCKS = ("auto", "wall", "cpu")


@dataclass(frozen=True, slots=True)
class Speedup:
    """Baseline vs variant step times from interleaved pairs, and the variant's speedup with its CI."""

    label: str
    """What is compared, e.g. ``gpcm forward=scan vs forward=sequential``."""
    changed: dict[str, tuple[Any, Any]]
    """Knobs that differ: name -> (baseline's, variant's); empty when only code differs."""
    clock: str
    """The clock the estimate is on: "wall" or "cpu" (this process's CPU time)."""
    estimate: RatioEstimate
    baseline_ms: dict[str, list[float]]
    """Per timed step: "wall", "cpu", "data_wall", "data_cpu" milliseconds."""
    variant_ms: dict[str, list[float]]

    def median_ms(self, side: str, what: str = "") -> float:
        """Median ms of `side` ("baseline" | "variant") on the estimate's clock; ``what="data"``: the data wait."""
        ms = self.baseline_ms if side == "baseline" else self.variant_ms
        return statistics.median(ms[f"{what}_{self.clock}" if what else self.clock])

    def extra_info(self) -> dict[str, Any]:
        """The ratio, its interval and the per-side medians, for pytest-benchmark's JSON."""
        return {"speedup": self.estimate.ratio, "speedup_ci_low": self.estimate.ci_low,
                "speedup_ci_high": self.estimate.ci_high, "pairs": self.estimate.n, "clock": self.clock,
                "compared": self.label, "baseline_step_ms_median": self.median_ms("baseline"),
                "variant_step_ms_median": self.median_ms("variant"),
                "changed": {k: [str(a), str(b)] for k, (a, b) in self.changed.items()}}


RoundRunner = Callable[[Callable[[], None], int, int], None]
"""run(one_round, rounds, warmup_rounds): how the rounds are driven (a plain loop or benchmark.pedantic)."""


def _plain_rounds(one_round: Callable[[], None], rounds: int, warmup_rounds: int) -> None:
    for _ in range(warmup_rounds + rounds):
        one_round()


def pick_clock(clock: str, *cfgs: RunConfig) -> str:
    """Resolve ``auto``: CPU time when every config trains on the CPU in this process, else wall time.

    CPU time leaves out the time other jobs held the cores, so on a shared runner it is several times
    steadier (bench/measure_gate_rates.py); it would miss work done elsewhere (DataLoader worker
    processes, the GPU, sleeps), so any of those means wall time.
    """
    from harness.config import resolve_device

    if clock not in CLOCKS:
        raise ValueError(f"clock: bad value {clock!r}; allowed: {' | '.join(CLOCKS)}")
    if clock != "auto":
        return clock
    local = all(resolve_device(c).type == "cpu" and c.num_workers == 0 for c in cfgs)
    return "cpu" if local else "wall"


def measure_speedup(baseline: Trainer, variant: Trainer, *, pairs: int = DEFAULT_PAIRS,
                    warmup_pairs: int = DEFAULT_WARMUP_PAIRS, clock: str = "auto",
                    run_rounds: RoundRunner = _plain_rounds, label: str = "") -> Speedup:
    """Interleave the two trainers' steps (A B, B A, ...) and estimate the variant's speedup."""
    from harness.analysis.stats import bootstrap_ratio

    if pairs < 2:
        raise ValueError(f"pairs: bad value {pairs}; a confidence interval needs at least 2 pairs (use >= 20)")
    clock = pick_clock(clock, baseline.cfg, variant.cfg)
    a, b = _Side(baseline), _Side(variant)
    done = {"rounds": 0}

    def one_round() -> None:
        i = done["rounds"]
        done["rounds"] += 1
        record = i >= warmup_pairs
        first, second = (a, b) if i % 2 == 0 else (b, a)  # alternate the order: no side always goes first
        first.timed_step(record)
        second.timed_step(record)

    run_rounds(one_round, pairs, warmup_pairs)
    ratios = [ta / tb if tb > 0 else math.nan for ta, tb in zip(a.ms[clock], b.ms[clock], strict=True)]
    changed = baseline.cfg.diff(variant.cfg)
    if baseline.cfg.workload != variant.cfg.workload:
        changed["workload"] = (baseline.cfg.workload, variant.cfg.workload)
    return Speedup(label=label or _label(baseline.cfg, changed), changed=changed, clock=clock,
                   estimate=bootstrap_ratio(ratios), baseline_ms=a.ms, variant_ms=b.ms)


def _label(cfg: RunConfig, changed: Mapping[str, tuple[Any, Any]]) -> str:
    if not changed:
        return f"{cfg.workload} (identical configs)"
    variant = ", ".join(f"{k}={v[1]}" for k, v in changed.items())
    baseline = ", ".join(f"{k}={v[0]}" for k, v in changed.items())
    return f"{cfg.workload} {variant} vs {baseline}"


def _where_time_went(s: Speedup) -> str:
    step_delta = s.median_ms("variant") - s.median_ms("baseline")
    data_delta = s.median_ms("variant", "data") - s.median_ms("baseline", "data")
    if step_delta <= 0:
        return (f"the variant's step is {-step_delta:.2f} ms faster, not enough: what the change buys has shrunk "
                "(or the baseline got faster)")
    where = "in data loading (DataLoader fetch / collate)" if data_delta >= 0.5 * step_delta else \
        "in compute (forward, backward, optimizer)"
    return (f"the variant's step is {step_delta:.2f} ms slower ({s.clock} clock), {data_delta:+.2f} ms of it "
            f"waiting for batches: the time went {where}")


def ratio_verdict(s: Speedup, min_speedup: float) -> tuple[bool, str]:
    """(passed, message). Fails only when the whole 95% CI lies below `min_speedup`.

    A shared runner adds bursts of load to some steps, so the point estimate alone wobbles; requiring
    the interval's upper end to fall short keeps false alarms rare (bench/measure_gate_rates.py measures
    the rate) while a real regression, whose interval sits clearly below the threshold, still fails.
    """
    est = s.estimate
    if not (est.n >= 2 and math.isfinite(est.ci_high)):
        return False, f"ratio gate {s.label}: no confidence interval ({est.n} valid pairs); cannot decide"
    measured = (f"speedup {est.ratio:.3f}x (95% CI {est.ci_low:.3f}-{est.ci_high:.3f}, {est.n} interleaved pairs, "
                f"{s.clock} clock; median step {s.median_ms('baseline'):.2f} ms -> {s.median_ms('variant'):.2f} ms)")
    if est.ci_high >= min_speedup:
        return True, f"ratio gate {s.label}: {measured} >= {min_speedup:g}x"
    cause = "knobs changed: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in s.changed.items()) if s.changed \
        else "no knob differs, so the code (or the machine) made the difference"
    return False, (f"ratio gate failed: {s.label}: {measured}, required >= {min_speedup:g}x; "
                   f"{_where_time_went(s)}; {cause}")


# --- counters and the function computed --------------------------------------------------------------

_CAUSES = {
    "forward_calls_per_step": "the model's root forward ran {value:g}x per micro-step: a duplicate forward "
                              "(e.g. logits from one forward, the loss from another)",
    "flops_per_step": "the step does {value:,} FLOPs instead of {expected:,}: extra forward/backward work "
                      "(a duplicate forward, recomputation) or a changed model",
    "reference_flops_per_step": "one forward + backward costs {value:,} FLOPs instead of {expected:,}: "
                                "the model changed",
    "param_count": "the model has {value:,} parameters instead of {expected:,}: its size or structure changed",
}


def counter_verdict(name: str, measured: Any, expected: Mapping[str, float]) -> tuple[bool, str]:
    """(passed, message) for exact counter expectations on a `StepCounters`/`StepBench`."""
    failures = []
    for key, want in expected.items():
        if not hasattr(measured, key):
            allowed = ", ".join(f.name for f in fields(measured) if f.name not in ("label", "config"))
            raise ValueError(f"counter '{key}' does not exist; allowed: {allowed}")
        value = getattr(measured, key)
        if value is None or not math.isclose(value, want, rel_tol=1e-9, abs_tol=0.0):
            hint = _CAUSES.get(key, "{value} != {expected}").format(value=value, expected=want)
            failures.append(f"{key} = {value} (expected {want}): {hint}")
    if failures:
        return False, f"counter gate failed: {name}: " + "; ".join(failures)
    return True, f"counter gate {name}: " + ", ".join(f"{k} = {v}" for k, v in expected.items())


def equivalence_verdict(base: RunConfig, variant: RunConfig) -> tuple[bool, str]:
    """(passed, message) of the one-step equivalence check (same seed, same batch) of two configs."""
    from harness.equivalence import check_equivalence

    result = check_equivalence(base, variant)
    changed = base.diff(variant)
    label = _label(base, changed)
    if result["passed"]:
        return True, f"equivalence gate {label}: {result['reason']}"
    return False, (f"equivalence gate failed: {label} does not compute the same function: {result['reason']}; "
                   f"knobs changed: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in changed.items()) or 'none'} "
                   "(a changed initialisation, loss or data order shows here)")


def loss_after_steps(cfg: RunConfig, steps: int) -> float:
    """Mean training loss over the first `steps` optimizer steps (2-10) at the config's seed."""
    from harness.trainer import Trainer

    if not 2 <= steps <= 10:
        raise ValueError(f"steps: bad value {steps}; use 2-10 (the trainer's final_loss averages the last 10 steps)")
    # A speed run of 1 warmup + (steps - 1) measured steps; final_loss averages all of them.
    run_cfg = cfg.replace(epochs=0, bench_warmup_steps=1, bench_steps=steps - 1)
    return float(Trainer(run_cfg).run().metrics["final_loss"])


def loss_verdict(base: RunConfig, variant: RunConfig, steps: int, rel_tol: float) -> tuple[bool, str]:
    """(passed, message): both configs reach the same training loss after `steps` steps at a fixed seed."""
    a, b = loss_after_steps(base, steps), loss_after_steps(variant, steps)
    rel = abs(a - b) / max(abs(a), 1e-12)
    label = _label(base, base.diff(variant))
    measured = (f"mean loss over {steps} steps {a:.6g} vs {b:.6g} "
                f"(relative difference {rel:.1e}, tolerance {rel_tol:.0e})")
    if rel <= rel_tol:
        return True, f"loss gate {label}: {measured}"
    return False, (f"loss gate failed: {label}: {measured}: training at the same seed diverged, so the variant "
                   "changes what is trained (initialisation, loss, data order or numerics)")


# --- the fixture ----------------------------------------------------------------------------------------


class TrainBench:
    """The `train_bench` fixture object: call it to benchmark one config; its methods are the gates."""

    def __init__(self, benchmark: Any, config: pytest.Config) -> None:
        self.benchmark = benchmark
        self.config = config
        self.threads: int = config.getoption("trainbench_threads", 1)

    def _resolve(self, workload: str, *layers: Mapping[str, Any]) -> RunConfig:
        from harness.registry import resolve

        return resolve(workload, *layers)

    def _refuse_if_unreliable(self) -> None:
        if xdist_active(self.config):
            pytest.skip(XDIST_REFUSAL)

    def _run_rounds(self) -> RoundRunner:
        # Route the rounds through pytest-benchmark while its fixture is unused in this test, so the
        # timing and extra_info land in --benchmark-json; a second timing in the same test uses a loop.
        if self.benchmark is None or self.benchmark._mode is not None:  # noqa: SLF001 (its "used" flag)
            return _plain_rounds

        def run(one_round: Callable[[], None], rounds: int, warmup_rounds: int) -> None:
            self.benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        return run

    def __call__(self, workload: str, **knobs: Any) -> StepBench:
        """Benchmark one config's optimizer step with pytest-benchmark (bench_steps rounds after
        bench_warmup_steps warmup steps) and return its figures, also stored in `benchmark.extra_info`."""
        from harness.probes.counters import ForwardCounter, cuda_peaks_gib, peak_rss_self_gib
        from harness.trainer import Trainer

        self._refuse_if_unreliable()
        cfg = self._resolve(workload, knobs)
        side = _Side(Trainer(cfg))
        counters = count_step(side)  # two warmup steps, the second counted against the plain reference
        if side.trainer.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(side.trainer.device)
        warmup = max(cfg.bench_warmup_steps - 2, 0)  # count_step ran two steps
        forward = ForwardCounter(side.trainer.handle)
        calls = {"n": 0}

        def step() -> None:
            calls["n"] += 1
            if calls["n"] == warmup + 1:
                forward.calls = 0  # count the timed rounds only
            side.timed_step(record=calls["n"] > warmup)

        try:
            self._run_rounds()(step, cfg.bench_steps, warmup)
        finally:
            forward.remove()
        timed = 0 if self.benchmark is None or self.benchmark.disabled else len(side.ms["wall"])
        step_ms, samples_per_s, tokens_per_s = _throughput(side) if timed else (None, None, None)
        result = StepBench(
            label=counters.label, config=cfg.to_dict(),
            forward_calls_per_step=forward.calls / (timed * cfg.grad_accum) if timed else
            counters.forward_calls_per_step,
            flops_per_step=counters.flops_per_step, reference_flops_per_step=counters.reference_flops_per_step,
            param_count=counters.param_count, samples_per_step=counters.samples_per_step,
            real_tokens_per_step=counters.real_tokens_per_step,
            padded_tokens_per_step=counters.padded_tokens_per_step, timed_steps=timed, step_ms_median=step_ms,
            samples_per_s=samples_per_s, tokens_per_s=tokens_per_s, peak_rss_gib=peak_rss_self_gib(),
            cuda_peak_allocated_gib=cuda_peaks_gib(side.trainer.device)[0], torch_threads=_torch_threads())
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

    def compare(self, workload: str, *, baseline: Mapping[str, Any], variant: Mapping[str, Any],
                min_speedup: float, pairs: int = DEFAULT_PAIRS, warmup_pairs: int = DEFAULT_WARMUP_PAIRS,
                clock: str = "auto", **common: Any) -> Speedup:
        """Ratio gate: the variant's step must be at least `min_speedup` x faster than the baseline's.

        `common` knobs (e.g. preset="tiny") apply to both. `clock`: see `pick_clock`. Fails the test with
        the measured ratio, its 95% CI and where the time went; skips (saying why) when benchmarks are disabled.
        """
        from harness.trainer import Trainer

        self._refuse_if_unreliable()
        base_cfg = self._resolve(workload, common, baseline)
        variant_cfg = self._resolve(workload, common, variant)
        trainers = Trainer(base_cfg), Trainer(variant_cfg)
        if self.benchmark is not None and self.benchmark.disabled:
            measure_speedup(*trainers, pairs=2, warmup_pairs=0)  # both configs still run: a smoke test
            pytest.skip("ratio gate not decided: benchmarks are disabled (--benchmark-disable)")
        result = measure_speedup(*trainers, pairs=pairs, warmup_pairs=warmup_pairs, clock=clock,
                                 run_rounds=self._run_rounds())
        if self.benchmark is not None:
            self.benchmark.extra_info.update({**result.extra_info(), "min_speedup": min_speedup})
        passed, message = ratio_verdict(result, min_speedup)
        if not passed:
            pytest.fail(message, pytrace=False)
        return result

    def equivalent(self, workload: str, *, baseline: Mapping[str, Any], variant: Mapping[str, Any],
                   **common: Any) -> None:
        """Equivalence gate: one step of both configs gives the same outputs, loss and gradients."""
        passed, message = equivalence_verdict(self._resolve(workload, common, baseline),
                                              self._resolve(workload, common, variant))
        if not passed:
            pytest.fail(message, pytrace=False)

    def same_loss(self, workload: str, *, baseline: Mapping[str, Any], variant: Mapping[str, Any],
                  steps: int = 3, rel_tol: float = 1e-4, **common: Any) -> None:
        """Quality gate at a fixed seed: both configs reach the same training loss after `steps` steps."""
        passed, message = loss_verdict(self._resolve(workload, common, baseline),
                                       self._resolve(workload, common, variant), steps, rel_tol)
        if not passed:
            pytest.fail(message, pytrace=False)

    def _finish(self) -> None:
        # A test that only checked counters never used the benchmark fixture; tell pytest-benchmark it
        # was skipped on purpose rather than have it warn "Benchmark fixture was not used at all".
        if self.benchmark is not None and self.benchmark._mode is None:  # noqa: SLF001
            self.benchmark.skipped = True


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


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
