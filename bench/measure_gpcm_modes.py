"""Time one Deep-GPCM training step (forward + loss + backward + optimizer step) in each forward mode.

Standalone: builds the model per mode from the same seed, takes one fixed collated batch from the
train split, warms every mode up, then times the modes interleaved round by round and reports the
median, p10/p90 and min wall time of full steps, the forward alone (no_grad), and the speedup of
the median over `sequential`.

    python bench/measure_gpcm_modes.py --preset cpu
    python bench/measure_gpcm_modes.py --preset seed --device cuda --steps 10
    python bench/measure_gpcm_modes.py --preset cpu memory_size=50 value_dim=200

On a GPU every timed region ends with torch.cuda.synchronize() (a deliberate sync: the host clock
must not be read over queued work).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from harness.config import parse_overrides
from harness.registry import resolve
from models.gpcm.model import FORWARD_MODES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # sync point: end of the timed region


def measure(overrides: dict[str, str], modes: list[str], device: torch.device, warmup: int, steps: int,
            rounds: int) -> list[dict[str, float | str]]:
    """Per mode: step and forward milliseconds (median, p10, p90) on one fixed batch.

    Modes are interleaved round by round (A B C A B C ...), so drift in a shared machine's load hits
    every mode alike; each round times `steps` consecutive steps of one mode.
    """
    base = resolve("gpcm", overrides)
    wl = base.get_workload()
    train, _ = wl.build_datasets(base)
    batch = wl.collate(base)([train[i] for i in range(min(base.batch_size, len(train)))])
    elements = wl.batch_counts(batch, base).loss_elements
    batch = wl.to_device(batch, device)
    runners: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}
    for mode in modes:
        cfg = base.replace(forward=mode)
        torch.manual_seed(cfg.seed)
        model = wl.build_model(cfg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer,
                 cfg: object = cfg) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = wl.loss(wl.forward(model, batch, cfg), batch, cfg).total / elements
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), base.clip_grad_norm)
            optimizer.step()

        def forward_only(model: torch.nn.Module = model, cfg: object = cfg) -> None:
            with torch.no_grad():
                wl.forward(model, batch, cfg)

        runners[mode] = (step, forward_only)
        for _ in range(warmup):
            step()
    step_ms: dict[str, list[float]] = {m: [] for m in modes}
    fwd_ms: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, (step, forward_only) in runners.items():
            step_ms[mode] += _time_ms(step, device, steps)
            fwd_ms[mode] += _time_ms(forward_only, device, 1)
    rows = []
    for mode in modes:
        times = sorted(step_ms[mode])
        q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else [times[0]] * 9
        rows.append({"mode": mode, "step_ms": statistics.median(times), "p10": q[0], "p90": q[-1],
                     "min": times[0], "forward_ms": statistics.median(fwd_ms[mode])})
    ref = next((r for r in rows if r["mode"] == "sequential"), None)
    for r in rows:
        r["speedup"] = ref["step_ms"] / r["step_ms"] if ref else float("nan")
    return rows


def _time_ms(fn: Callable[[], None], device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    """Command line: preset, modes, steps, device, then knob=value overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--modes", default=",".join(FORWARD_MODES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode per round")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds over the modes")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("overrides", nargs="*", help="knob=value, e.g. memory_size=50")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"preset": args.preset, **parse_overrides(args.overrides)}
    device = torch.device(args.device)
    rows = measure(overrides, args.modes.split(","), device, args.warmup, args.steps, args.rounds)
    cfg = resolve("gpcm", overrides)
    print(f"gpcm preset={cfg.preset} batch={cfg.batch_size} N={cfg.memory_size} d_k={cfg.key_dim} "
          f"d_v={cfg.value_dim} lengths={cfg.min_seq_len}..{cfg.max_seq_len} device={device} "
          f"threads={torch.get_num_threads()} timed steps/mode={args.steps * args.rounds}")
    print(f"{'mode':<11} {'step ms':>9} {'p10':>8} {'p90':>8} {'min':>8} {'fwd ms':>8} {'speedup':>8}")
    for r in rows:
        print(f"{r['mode']:<11} {r['step_ms']:9.1f} {r['p10']:8.1f} {r['p90']:8.1f} {r['min']:8.1f} "
              f"{r['forward_ms']:8.1f} {r['speedup']:7.2f}x")


if __name__ == "__main__":
    main()
